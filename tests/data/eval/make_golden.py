#!/usr/bin/env python3
"""Golden values for tests/eval: the metrics of the crafted sets in this folder, computed by
the reference implementations, written to golden.json.

Run from the repository root (needs Java for pycocoevalcap's Stanford PTB tokenizer):

    .venv/bin/pip install pycocoevalcap==1.2
    .venv/bin/python tests/data/eval/make_golden.py

Captions: PyPI pycocoevalcap 1.2 (PTBTokenizer, Bleu(4), Rouge, Cider), fed the way its
COCOEvalCap feeds them (references and candidates tokenised in two Java runs). VQA and GQA: a
Python re-implementation, written for this script, of the official VQAv2 evaluator's logic
(vqaEval.py of the VQA API, the version LAVIS copies): answer normalisation, the
leave-one-annotator-out accuracy, per answer / question type means. The script also records
the tokenizer's output for every crafted caption and for a list of probe sentences, and the
normaliser's output for probe answers, so the C++ tests check those one by one.
"""
import json
import os
import re

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------- captions

def karpathy_image_id(image_path):
    # LAVIS's coco_karpathy eval dataset: the digits after the last '_' of the file name,
    # after str.strip(".jpg") (which strips those characters from both ends).
    return int(image_path.split("/")[-1].strip(".jpg").split("_")[-1])


def karpathy_references(name):
    refs = {}
    for entry in load(name):
        captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        refs.setdefault(karpathy_image_id(entry["image"]), []).extend(captions)
    return refs


def coco_references(name):
    data = load(name)
    refs = {image["id"]: [] for image in data["images"]}
    for ann in data["annotations"]:
        refs[ann["image_id"]].append(ann["caption"])
    domains = {image["id"]: image.get("domain") for image in data["images"]}
    return refs, domains


def predictions(name, key, value):
    return {p[key]: p[value] for p in load(name)}


def tokenize(captions_per_id):
    """{id: [caption, ...]} -> {id: [tokenised, ...]} through pycocoevalcap's PTBTokenizer."""
    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions_per_id.items()})


def caption_metrics(refs, cands, ids):
    gts = {i: refs[i] for i in ids}
    res = {i: cands[i] for i in ids}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"Bleu_{n + 1}": bleu[n] for n in range(4)}
    out.update(ROUGE_L=float(rouge), CIDEr=float(cider))
    return out


def caption_task(refs_raw, preds_raw, domains=None):
    ids = list(refs_raw.keys())
    refs = tokenize(refs_raw)
    cands = tokenize({i: [preds_raw[i]] for i in ids})
    result = {"images": len(ids), **caption_metrics(refs, cands, ids)}
    if domains and any(domains.values()):
        result["per_domain"] = {}
        for domain in sorted(set(domains.values())):
            subset = [i for i in ids if domains[i] == domain]
            result["per_domain"][domain] = {"images": len(subset), **caption_metrics(refs, cands, subset)}
    tokenized = [[c, t] for i in ids for c, t in zip(refs_raw[i], refs[i])]
    tokenized += [[preds_raw[i], cands[i][0]] for i in ids]
    return result, tokenized


# ---------------------------------------------------------------- VQA (official logic)

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The evaluator's "(?!<=\d)" is a lookahead, not a lookbehind, so only "not followed by a
# digit" matters; it passes re.UNICODE (32) as re.sub's count.
PERIOD = re.compile(r"\.(?!\d)")


def process_punctuation(text):
    out = text
    strip_all = DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD.sub("", out, count=32)


def process_digit_article(text):
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_prediction(answer):
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def vqa_accuracy(prediction, records):
    predicted = normalize_prediction(prediction)
    records = [dict(r) for r in records]
    if len({r["answer"] for r in records}) > 1:
        for r in records:
            r["answer"] = process_punctuation(r["answer"])
    total = 0.0
    for held_out in records:
        others = [r for r in records if r != held_out]  # whole-record comparison, as there
        total += min(1.0, sum(1 for r in others if r["answer"] == predicted) / 3.0)
    return total / len(records)


def mean_x100(values):
    return 100.0 * sum(values) / len(values)


def vqa_task(annotations_name, predictions_name):
    anns = load(annotations_name)["annotations"]
    preds = predictions(predictions_name, "question_id", "answer")
    per_question, by_answer_type, by_question_type = {}, {}, {}
    for ann in anns:
        acc = vqa_accuracy(preds[ann["question_id"]], ann["answers"])
        per_question[str(ann["question_id"])] = acc
        if "answer_type" in ann:
            by_answer_type.setdefault(ann["answer_type"], []).append(acc)
        if "question_type" in ann:
            by_question_type.setdefault(ann["question_type"], []).append(acc)
    return {
        "questions": len(anns),
        "overall": mean_x100(list(per_question.values())),
        "perAnswerType": {k: mean_x100(v) for k, v in by_answer_type.items()},
        "perQuestionType": {k: mean_x100(v) for k, v in by_question_type.items()},
    }, per_question


def gqa_task(questions_name, predictions_name):
    questions = load(questions_name)
    preds = predictions(predictions_name, "question_id", "answer")
    hits, by_structural, by_semantic = [], {}, {}
    for qid, q in questions.items():
        hit = 1.0 if normalize_prediction(preds[qid]) == normalize_prediction(q["answer"]) else 0.0
        hits.append(hit)
        types = q.get("types", {})
        if "structural" in types:
            by_structural.setdefault(types["structural"], []).append(hit)
        if "semantic" in types:
            by_semantic.setdefault(types["semantic"], []).append(hit)
    return {
        "questions": len(hits),
        "accuracy": mean_x100(hits),
        "accuracyPerStructuralType": {k: mean_x100(v) for k, v in by_structural.items()},
        "accuracyPerSemanticType": {k: mean_x100(v) for k, v in by_semantic.items()},
    }


# ---------------------------------------------------------------- probes

TOKENIZER_PROBES = [
    "A man's dog isn't running; it's \"happy\"!",
    "They're sure we've seen I'm told you'll see he'd go, can't won't shouldn't.",
    "Two dogs' toys and James' hat on the U.S. flag, e.g. today.",
    "A (big) [red] {blue} box -- and a - dash ... end",
    "1,000 cats, 3.5 dogs at 10:30 and 50% of $5 for #1.",
    "A black-and-white photo of a 4-year-old's T-shirt.",
    "Is this a 'yes' or a `no` question? Yes: it is!!",
    "Mr. Smith and Dr. Who met St. Paul vs. Jan. at 5 p.m. etc. today",
    "I cannot believe you're gonna eat 12.5cm of it’s “curly” fries… ok",
    "A 3 1/2 year old boy w/ a kite & a frisbee",
    "CAPITAL LETTERS AND Mixed Case Words",
    "two  spaces\tand a tab",
    "Ending with an ellipsis...",
    "rock'n'roll in the '90s with y'all",
    "",
]

NORMALIZER_PROBES = [
    "Yes", "yes.", "Two", "the dog", "An apple", "dont know", "T-Shirt", "t shirt", "1,000", "10,000 ft.",
    "black/white", "black / white", "What?", "a lot!", "it's", "2.5", "3.14.", "none", "Ten dogs",
    "hi (there)", "x_y", "a+b = c", "e-mail @ home", "c:/drive", "isnt", "Im", "\ttabbed\nanswer  ",
    "back\\slash", "<html>", "`quoted`", "\"quoted\"", "a.b.c.d", "." * 40 + "end",
]


def main():
    golden = {}
    tokenized = []

    coco_refs = karpathy_references("coco_karpathy_test.json")
    coco_preds = predictions("coco_predictions.json", "image_id", "caption")
    golden["coco_caption"], pairs = caption_task(coco_refs, coco_preds)
    tokenized += pairs

    nocaps_refs, nocaps_domains = coco_references("nocaps_val.json")
    nocaps_preds = predictions("nocaps_predictions.json", "image_id", "caption")
    golden["nocaps"], pairs = caption_task(nocaps_refs, nocaps_preds, nocaps_domains)
    tokenized += pairs

    probes = tokenize({0: TOKENIZER_PROBES})[0]
    tokenized += [[raw, tok] for raw, tok in zip(TOKENIZER_PROBES, probes)]
    golden["tokenizer"] = tokenized

    golden["vqav2"], golden["vqav2_per_question"] = vqa_task("vqav2_annotations.json", "vqav2_predictions.json")
    golden["okvqa"], golden["okvqa_per_question"] = vqa_task("okvqa_annotations.json", "okvqa_predictions.json")
    golden["gqa"] = gqa_task("gqa_testdev_balanced_questions.json", "gqa_predictions.json")
    golden["normalizer"] = [
        {"input": p, "punctuation": process_punctuation(p), "digit_article": process_digit_article(p),
         "normalized": normalize_prediction(p)}
        for p in NORMALIZER_PROBES
    ]

    with open(os.path.join(HERE, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(json.dumps({k: golden[k] for k in ("coco_caption", "nocaps", "vqav2", "okvqa", "gqa")}, indent=1))


if __name__ == "__main__":
    main()
