#!/usr/bin/env python3
"""Golden values from BOTH versions of the official VQA evaluator, written to golden_vqa_official.json.

The official evaluator (github.com/GT-Vision-Lab/VQA, files PythonHelperTools/vqaTools/vqa.py and
PythonEvaluationTools/vqaEvaluation/vqaEval.py) exists in two versions:

  "2021"   commit a013f0043c1e2cdc995922dfe257f7149aa9af06 ("Fixed processing answers bug", 2021-03-11)
  "legacy" its parent a4f1afd59cfda2f1a7f7f720f40bfea2e338c6ad (the version LAVIS and MiniGPT-4's
           lavis-style vqa_tools/vqa_eval.py copy; make_golden.py re-implements this one)

vqa.py is the same in both. In vqaEval.py's evaluate():
  legacy: the prediction is always normalised (processPunctuation then processDigitArticle); the ten
          ground-truth answers get processPunctuation only, and only when they are not all equal.
  2021:   the ground-truth answers first have '\\n'/'\\t' replaced by ' ' and are stripped; only when they
          are not all equal are both the answers and the prediction normalised (processPunctuation then
          processDigitArticle); when they are all equal the prediction must match them exactly.

This file contains none of that code: it loads the two official checkouts at run time. Regenerate
(from the repository root; needs git and Debian's python3 <= 3.12, which still has lib2to3):

    git clone https://github.com/GT-Vision-Lab/VQA /tmp/VQA-src
    for v in 2021:a013f0043c1e2cdc995922dfe257f7149aa9af06 legacy:a4f1afd59cfda2f1a7f7f720f40bfea2e338c6ad; do
        mkdir -p /tmp/vqa_official/${v%%:*}
        git -C /tmp/VQA-src archive ${v#*:} PythonHelperTools/vqaTools PythonEvaluationTools/vqaEvaluation \\
            | tar -x -C /tmp/vqa_official/${v%%:*}
    done
    /usr/bin/python3 tests/data/eval/make_vqa_official_golden.py [--official /tmp/vqa_official] \\
        [--python2 /path/to/python2.7]

The folder can also be given by the environment variable VQA_OFFICIAL_DIR (default /tmp/vqa_official).

The official files are Python 2. They are run here on Python 3 after an in-memory conversion that
changes no logic: (1) the leading indentation of every line is expanded with tab stops of 8 columns,
Python 2's own rule (vqa.py mixes tabs and spaces, which Python 3 rejects with TabError); (2) the
`print x` statements become `print(x)` calls (lib2to3's fix_print, the only 2to3 fixer, besides an
irrelevant list() around dict.items() in the unused VQA.info, that has anything to change in these
files). Their console output is sent to stderr. With --python2, the unmodified files are also run by
that Python 2.7 interpreter, and the script fails if any number differs (Python 2's round() rounds
exact halves away from zero, Python 3's to even; such ties are possible but rare).

Sets: every <name>_questions.json / <name>_annotations.json / <name>_predictions.json triple below.
The official VQA.loadRes copies five metadata keys (info, task_type, data_type, data_subtype, license)
from the questions file; where a crafted questions file lacks some of them (okvqa), a temporary copy
with those keys added as empty values is passed instead. Nothing else is changed.

Output: {set: {"2021"|"legacy": {"overall", "perAnswerType", "perQuestionType", "per_question"}}}
with VQAEval's own numbers (n=2: values rounded to two decimals, on the 0-100 scale); per_question is
VQAEval.evalQA keyed by the question id as a string.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import types
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
SETS = ["vqav2", "okvqa", "vqa_versions"]
VERSIONS = ["2021", "legacy"]
VQA_PY = os.path.join("PythonHelperTools", "vqaTools", "vqa.py")
VQAEVAL_PY = os.path.join("PythonEvaluationTools", "vqaEvaluation", "vqaEval.py")
LOADRES_KEYS = ["info", "task_type", "data_type", "data_subtype", "license"]


def expand_indentation(source):
    out = []
    for line in source.splitlines(True):
        body = line.lstrip(" \t")
        out.append(line[: len(line) - len(body)].expandtabs(8) + body)
    return "".join(out)


def convert_print_statements(source, name):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lib2to3.refactor import RefactoringTool
    except ImportError:
        sys.exit("this script needs lib2to3 (Python <= 3.12), e.g. Debian's /usr/bin/python3")
    return str(RefactoringTool(["lib2to3.fixes.fix_print"]).refactor_string(source, name))


def load_official_module(path, module_name):
    with open(path) as f:
        source = f.read()
    source = convert_print_statements(expand_indentation(source), module_name)
    module = types.ModuleType(module_name)
    module.__file__ = path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "\d" in non-raw string literals
        exec(compile(source, path, "exec"), module.__dict__)
    return module


def set_files(name, tmpdir):
    ques = os.path.join(HERE, name + "_questions.json")
    ann = os.path.join(HERE, name + "_annotations.json")
    res = os.path.join(HERE, name + "_predictions.json")
    with open(ques, encoding="utf-8") as f:
        questions = json.load(f)
    missing = [k for k in LOADRES_KEYS if k not in questions]
    if missing:
        for k in missing:
            questions[k] = ""
        ques = os.path.join(tmpdir, name + "_questions.json")
        with open(ques, "w", encoding="utf-8") as f:
            json.dump(questions, f)
    return ann, ques, res


def summarize(vqa_eval):
    acc = vqa_eval.accuracy
    return {
        "overall": acc["overall"],
        "perAnswerType": acc["perAnswerType"],
        "perQuestionType": acc["perQuestionType"],
        "per_question": {str(q): a for q, a in vqa_eval.evalQA.items()},
    }


def evaluate_python3(official, files):
    results = {}
    for version in VERSIONS:
        vqa_mod = load_official_module(os.path.join(official, version, VQA_PY), "vqa_" + version)
        eval_mod = load_official_module(os.path.join(official, version, VQAEVAL_PY), "vqaEval_" + version)
        results[version] = {}
        for name, (ann, ques, res) in files.items():
            with contextlib.redirect_stdout(sys.stderr):
                vqa = vqa_mod.VQA(ann, ques)
                vqa_res = vqa.loadRes(res, ques)
                vqa_eval = eval_mod.VQAEval(vqa, vqa_res, n=2)
                vqa_eval.evaluate()
                print()
            results[version][name] = summarize(vqa_eval)
    return results


# Run by the Python 2.7 interpreter on the unmodified official files (argv: official folder, version,
# then ann ques res triples); prints one JSON line.
PYTHON2_DRIVER = r"""
import json, os, sys
official, version = sys.argv[1], sys.argv[2]
sys.path[:0] = [os.path.join(official, version, 'PythonHelperTools', 'vqaTools'),
                os.path.join(official, version, 'PythonEvaluationTools', 'vqaEvaluation')]
from vqa import VQA
from vqaEval import VQAEval
stdout, sys.stdout = sys.stdout, sys.stderr
out = {}
args = sys.argv[3:]
for i in range(0, len(args), 4):
    name, ann, ques, res = args[i:i + 4]
    vqa = VQA(ann, ques)
    e = VQAEval(vqa, vqa.loadRes(res, ques), n=2)
    e.evaluate()
    print('')
    out[name] = {'overall': e.accuracy['overall'], 'perAnswerType': e.accuracy['perAnswerType'],
                 'perQuestionType': e.accuracy['perQuestionType'],
                 'per_question': dict((str(q), a) for q, a in e.evalQA.items())}
stdout.write(json.dumps(out) + '\n')
"""


def evaluate_python2(python2, official, files):
    results = {}
    for version in VERSIONS:
        argv = [python2, "-c", PYTHON2_DRIVER, official, version]
        for name, triple in files.items():
            argv += [name] + list(triple)
        out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
        results[version] = json.loads(out.strip().splitlines()[-1])
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", default=os.environ.get("VQA_OFFICIAL_DIR", "/tmp/vqa_official"),
                        help="folder holding 2021/ and legacy/ (default: $VQA_OFFICIAL_DIR or /tmp/vqa_official)")
    parser.add_argument("--python2", help="also run the unmodified files with this Python 2.7 and compare")
    parser.add_argument("--out", default=os.path.join(HERE, "golden_vqa_official.json"))
    args = parser.parse_args()
    for version in VERSIONS:
        for rel in (VQA_PY, VQAEVAL_PY):
            if not os.path.isfile(os.path.join(args.official, version, rel)):
                sys.exit("missing %s (see this script's docstring)" % os.path.join(args.official, version, rel))

    with tempfile.TemporaryDirectory() as tmpdir:
        files = {name: set_files(name, tmpdir) for name in SETS}
        py3 = evaluate_python3(args.official, files)
        if args.python2:
            py2 = evaluate_python2(args.python2, args.official, files)
            if py2 != py3:
                for version in VERSIONS:
                    for name in SETS:
                        if py2[version][name] != py3[version][name]:
                            print("python2/python3 mismatch: %s %s\n  py2 %s\n  py3 %s" % (
                                version, name, py2[version][name], py3[version][name]), file=sys.stderr)
                sys.exit(1)
            print("python2 (%s) gives the same numbers" % args.python2, file=sys.stderr)

    golden = {name: {version: py3[version][name] for version in VERSIONS} for name in SETS}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1, sort_keys=False)
        f.write("\n")
    for name in SETS:
        print("%-13s 2021 %6.2f   legacy %6.2f" % (name, golden[name]["2021"]["overall"],
                                                   golden[name]["legacy"]["overall"]))


if __name__ == "__main__":
    main()
