#!/usr/bin/env python3
"""Writes the seed corpus of the openai_request harness (tests/fuzz/corpus/openai_request):
a few valid /v1/chat/completions and page bodies, and small hostile ones (numbers past
double's range, wrong types, deep nesting, image headers claiming huge canvases, too many
images). Run from anywhere; it rewrites the folder's files."""
import base64
import json
import os
import struct
import zlib

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "openai_request")


def png(width, height, claim=None):
    raw = b"".join(b"\x00" + bytes([0x30, 0x80, 0xC0]) * width for _ in range(height))
    w, h = claim or (width, height)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def uri(data, media="image/png"):
    return f"data:{media};base64," + base64.b64encode(data).decode()


def image(data):
    return {"type": "image_url", "image_url": {"url": uri(data)}}


def user(content):
    return {"role": "user", "content": content}


small = png(3, 2)
seeds = {
    # valid
    "valid_text.json": {"model": "minigpt4", "messages": [user("Hello")], "max_tokens": 16, "temperature": 0},
    "valid_image.json": {"messages": [user([image(small), {"type": "text", "text": "What is this?"}])],
                         "stream": True, "stream_options": {"include_usage": True}, "seed": 7},
    "valid_rounds.json": {"messages": [{"role": "system", "content": "Be brief."}, user([image(small), {"type": "text", "text": "?"}]),
                                       {"role": "assistant", "content": [{"type": "text", "text": "A picture."}]},
                                       user("And then?")],
                          "stop": ["###", "\n\n"], "top_p": 0.5, "top_k": 3, "num_beams": 2, "repetition_penalty": 1.1,
                          "length_penalty": 0.5, "frequency_penalty": 0, "response_format": {"type": "text"},
                          "tool_choice": "none", "modalities": ["text"], "lora": "original", "user": "u", "n": 1},
    "valid_bare_url.json": {"messages": [user([{"type": "image_url", "image_url": uri(small)}])]},
    "page_ask.json": {"text": "What is in the image?", "num_beams": 3, "temperature": 0.7, "max_new_tokens": 20},
    "page_image.json": {"image": uri(small)},
    "page_lora.json": {"lora": "original"},
    # hostile: fields
    "bad_response_format_type.json": {"messages": [user("hi")], "response_format": {"type": 5}},
    "bad_types.json": {"messages": [{"role": 5, "content": {"a": 1}}], "stream": "yes", "temperature": "hot", "stop": [1]},
    "bad_unsigned_max_tokens.json": {"messages": [user("hi")], "max_tokens": 18446744073709551615},
    "bad_tiny_temperature.json": {"messages": [user("hi")], "temperature": 1e-300, "repetition_penalty": 1e-300},
    "bad_long_stop.json": {"messages": [user("hi")], "stop": ["x" * 600]},
    "bad_page_num_beams.json": {"text": "hi", "num_beams": 18446744073709551615, "max_new_tokens": "5"},
    # hostile: images
    "bad_png_claims_huge.json": {"messages": [user([image(png(3, 2, claim=(65536, 65536))), {"type": "text", "text": "?"}])]},
    "bad_png_claims_overflow.json": {"messages": [user([image(png(3, 2, claim=(0xFFFFFFFF, 0xFFFFFFFF)))])]},
    "bad_png_size_lies.json": {"messages": [user([image(png(3, 2, claim=(4, 4)))])]},
    "bad_too_many_images.json": {"messages": [user([image(small)] * 6 + [{"type": "text", "text": "?"}])]},
    "bad_remote_image.json": {"messages": [user([{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}])]},
    "bad_gif.json": {"messages": [user([{"type": "image_url", "image_url": {"url": uri(b"GIF89a\x05\x00\x07\x00rest", "image/gif")}}])]},
}
raw = {
    # numbers past double's range (nlohmann: out_of_range 406, not parse_error)
    "bad_max_tokens_400_digits.json": '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + "9" * 400 + "}",
    "bad_temperature_1e309.json": '{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e309}',
    "bad_stop_overflow.json": '{"messages": [{"role": "user", "content": "hi"}], "stop": ["a", -1e999]}',
    "bad_page_overflow.json": '{"text": "hi", "num_beams": 1e400}',
    # nesting past limits.max_json_depth, in 600 bytes
    "bad_deep_nesting.json": '{"messages": ' + "[" * 300 + "]" * 300 + "}",
    "bad_deep_objects.json": '{"metadata": ' + '{"a":' * 300 + "1" + "}" * 300 + "}",
    # syntax
    "bad_truncated.json": '{"messages": [{"role": "user", "content": "hi"',
    "bad_control_chars.json": '{"messages": ["\x01\x02"]}',
    "bad_not_object.json": "[1, 2, 3]",
    "empty.json": "",
}
os.makedirs(OUT, exist_ok=True)
for name, value in seeds.items():
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(value, f)
for name, text in raw.items():
    with open(os.path.join(OUT, name), "w") as f:
        f.write(text)
print(f"wrote {len(seeds) + len(raw)} seeds to {OUT}")
