#!/usr/bin/env python3
"""Writes the seed corpora of the data harnesses (standard library only):

  tests/fuzz/corpus/webdataset_tar/  valid shards (plain and gzip) and hostile ones
  tests/fuzz/corpus/cc_sbu_align/    valid filter_cap.json files and hostile ones
  tests/fuzz/corpus/image_decode/    small valid images of each accepted format and
                                     hostile headers (a few bytes that claim a huge picture)

Every file is small (a hostile case claims or expands to something huge; it never is
huge on disk). Run from anywhere: python3 tests/fuzz/make_data_seeds.py
"""
import gzip
import io
import os
import struct
import tarfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "data", "parity", "tiny_vicuna0", "image_processor")


def write(folder, name, data):
    path = os.path.join(HERE, "corpus", folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    assert len(data) <= 100_000, (name, len(data))


# ---- images

def png(width, height, rows=None, color_type=2, bit_depth=8, declared=None):
    """A PNG; `declared` (w, h) puts other dimensions in IHDR than the data has."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    w, h = declared or (width, height)
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    if rows is None:
        rows = b"".join(b"\0" + bytes((x * 7 + y * 13 + c * 50) & 0xFF for x in range(width) for c in range(channels))
                        for y in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def bmp(width, height, top_down=False, dib_width=None, dib_height=None):
    row = bytes((x * 9 + c * 40) & 0xFF for x in range(width) for c in range(3))
    row += b"\0" * ((4 - len(row) % 4) % 4)
    pixels = row * height
    w = width if dib_width is None else dib_width
    h = (-height if top_down else height) if dib_height is None else dib_height
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def ppm(width, height, declared=None):
    w, h = declared or (width, height)
    body = bytes((x * 5 + y * 3 + c * 60) & 0xFF for y in range(height) for x in range(width) for c in range(3))
    return b"P6\n# a comment\n%d %d\n255\n" % (w, h) + body


def tiff(width, height, tile=None, rows_per_strip=None, big_endian=False):
    """Uncompressed 8-bit RGB, one strip (or the tile tags given, pointing at too little data)."""
    e = ">" if big_endian else "<"
    pixels = bytes((x * 11 + y * 5 + c * 70) & 0xFF for y in range(height) for x in range(width) for c in range(3))
    entries = [
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, 0),  # strip offset, patched below
        (277, 3, 1, 3), (278, 4, 1, rows_per_strip if rows_per_strip is not None else height),
        (279, 4, 1, len(pixels)),
    ]
    if tile:
        entries = [t for t in entries if t[0] not in (273, 278, 279)]
        entries += [(322, 4, 1, tile[0]), (323, 4, 1, tile[1]), (324, 4, 1, 0), (325, 4, 1, len(pixels))]
    entries.sort()
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = ifd_offset + ifd_size
    out = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, ifd_offset)
    out += struct.pack(e + "H", len(entries))
    for tag, kind, count, value in entries:
        if tag in (273, 324):
            value = data_offset
        if kind == 3:
            out += struct.pack(e + "HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack(e + "HHII", tag, kind, count, value)
    out += struct.pack(e + "I", 0)
    return out + pixels


def jpeg_with_size(jpeg, width, height):
    """The JPEG with its frame header's size replaced (the scan data is left as it was)."""
    i = 2
    while i < len(jpeg):
        assert jpeg[i] == 0xFF
        marker = jpeg[i + 1]
        length = struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return jpeg[:i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]
        i += 2 + length
    raise ValueError("no SOF")


def images():
    folder = "image_decode"
    with open(os.path.join(FIXTURES, "freshflower_gray_97x73.jpg"), "rb") as f:
        jpeg = f.read()
    write(folder, "valid_gray_97x73.jpg", jpeg)
    write(folder, "valid_rgb_24x16.png", png(24, 16))
    write(folder, "valid_rgba_9x7.png", png(9, 7, color_type=6))
    write(folder, "valid_gray16_5x4.png", png(5, 4, color_type=0, bit_depth=16,
                                            rows=b"".join(b"\0" + bytes(range(10)) for _ in range(4))))
    write(folder, "valid_12x10.bmp", bmp(12, 10))
    write(folder, "valid_topdown_7x5.bmp", bmp(7, 5, top_down=True))
    write(folder, "valid_11x6.ppm", ppm(11, 6))
    write(folder, "valid_8x6.tif", tiff(8, 6))
    write(folder, "valid_8x6_be.tif", tiff(8, 6, big_endian=True))
    write(folder, "valid_13x9.pgm", b"P5 13 9 255\n" + bytes(range(117)))
    # Hostile: small files whose header claims a huge picture.
    write(folder, "huge_png_60000x60000.png", png(4, 4, declared=(60000, 60000)))
    write(folder, "huge_png_2^31.png", png(4, 4, declared=(0x7FFFFFFF, 0x7FFFFFFF)))
    write(folder, "huge_png_4G_width.png", png(4, 4, declared=(0xFFFFFFFF, 1)))
    write(folder, "huge_jpeg_65500x65500.jpg", jpeg_with_size(jpeg, 65500, 65500))
    write(folder, "huge_jpeg_20000x20000.jpg", jpeg_with_size(jpeg, 20000, 20000))
    write(folder, "jpeg_height_0_dnl.jpg", jpeg_with_size(jpeg, 97, 0))
    write(folder, "huge_bmp_2^31.bmp", bmp(2, 2, dib_width=0x7FFFFFFF, dib_height=-0x80000000))
    write(folder, "huge_bmp_100000x100000.bmp", bmp(2, 2, dib_width=100000, dib_height=100000))
    write(folder, "huge_ppm.ppm", ppm(2, 2, declared=(100000, 100000)))
    write(folder, "huge_ppm_digits.ppm", b"P6\n" + b"9" * 5000 + b" 1\n255\n")
    write(folder, "huge_tiff_tile.tif", tiff(4, 4, tile=(16384, 16384)))
    write(folder, "huge_tiff_strip.tif", tiff(4, 4, rows_per_strip=0x7FFFFFF0))
    write(folder, "huge_tiff_80000x80000.tif", tiff(4, 4)[:8] + tiff(4, 4)[8:].replace(
        struct.pack("<HHII", 256, 4, 1, 4), struct.pack("<HHII", 256, 4, 1, 80000)).replace(
        struct.pack("<HHII", 257, 4, 1, 4), struct.pack("<HHII", 257, 4, 1, 80000)))
    write(folder, "bigtiff_header.tif", b"II+\x00\x08\x00\x00\x00" + struct.pack("<Q", 16) +
          struct.pack("<Q", 2) + struct.pack("<HHQQ", 256, 16, 1, 1 << 40) + struct.pack("<HHQQ", 257, 16, 1, 1 << 40))
    write(folder, "tiff_ifd_out_of_file.tif", b"II*\x00" + struct.pack("<I", 0xFFFFFFF0))
    write(folder, "huge_webp_vp8x.webp", b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) +
          b"\0\0\0\0" + b"\xff\xff\xff" + b"\xff\xff\xff")
    write(folder, "huge_webp_vp8l.webp", b"RIFF" + struct.pack("<I", 13) + b"WEBPVP8L" + struct.pack("<I", 5) +
          b"\x2f" + struct.pack("<I", 0x0FFFFFFF))
    write(folder, "huge_webp_vp8.webp", b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8 " + struct.pack("<I", 10) +
          b"\0\0\0\x9d\x01\x2a\xff\x3f\xff\x3f")
    write(folder, "huge_gif.gif", b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\0\0\0;")
    # Truncated and corrupt.
    write(folder, "truncated_jpeg_3.jpg", jpeg[:3])
    write(folder, "truncated_jpeg_half.jpg", jpeg[:len(jpeg) // 2])
    write(folder, "truncated_png.png", png(24, 16)[:60])
    write(folder, "png_signature_only.png", b"\x89PNG\r\n\x1a\n")
    corrupt = bytearray(png(24, 16))
    for k in range(40, 70):
        corrupt[k] ^= 0x5A
    write(folder, "corrupt_png.png", bytes(corrupt))
    corrupt = bytearray(jpeg)
    for k in range(len(jpeg) // 2, len(jpeg) // 2 + 200):
        corrupt[k] = (corrupt[k] * 37 + 11) & 0xFF
    write(folder, "corrupt_jpeg_scan.jpg", bytes(corrupt))
    write(folder, "jpeg_sos_first.jpg", b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 6 + b"\xff\xd9")
    write(folder, "jpeg_zero_length_segment.jpg", b"\xff\xd8\xff\xe0\x00\x00\xff\xd9")
    write(folder, "bmp_bad_dib.bmp", b"BM" + b"\0" * 12 + struct.pack("<I", 20) + b"\0" * 20)
    write(folder, "bmp_short.bmp", b"BM\0\0")
    # Formats refused by name.
    write(folder, "jpeg2000.jp2", b"\0\0\0\x0cjP  \r\n\x87\n" + b"\0" * 40)
    write(folder, "openexr.exr", b"\x76\x2f\x31\x01" + b"\0" * 40)
    write(folder, "radiance.hdr", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 100000 +X 100000\n")
    write(folder, "pam.pam", b"P7\nWIDTH 100000\nHEIGHT 100000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n")
    write(folder, "pfm.pfm", b"PF\n100000 100000\n-1.0\n")
    write(folder, "text.txt", b"not an image at all\n")


# ---- webdataset shards

def tar_bytes(members, gz=False, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


def ustar_header(name, size_field, kind=b"0"):
    """A ustar header whose size field is given as raw bytes (12 of them)."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = size_field
    h[136:148] = b"00000000000\0"
    h[156:157] = kind
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def shards():
    folder = "webdataset_tar"
    with open(os.path.join(FIXTURES, "freshflower_gray_97x73.jpg"), "rb") as f:
        jpeg = f.read()
    small_png = png(6, 4)
    valid = [("000000001.jpg", jpeg), ("000000001.txt", b"a gray flower"),
             ("000000002.png", small_png), ("000000002.json", b'{"caption": "A Small PNG", "key": "2"}'),
             ("000000003.jpg", b"not a jpeg"), ("000000003.txt", b"broken image"),
             ("000000004.txt", b"no image"), ("dir/000000005.seg.png", small_png), ("README", b"not a sample")]
    write(folder, "valid.tar", tar_bytes(valid))
    write(folder, "valid.tar.gz", tar_bytes(valid, gz=True))
    write(folder, "valid_gnu.tar", tar_bytes(valid[:4], fmt=tarfile.GNU_FORMAT))
    whole = tar_bytes(valid)
    write(folder, "truncated.tar", whole[:len(whole) * 6 // 10])
    write(folder, "truncated.tar.gz", tar_bytes(valid, gz=True)[:300])
    # Members that claim (or hold) more than limits.max_tar_member_bytes.
    write(folder, "claims_8GiB_member.tar",
          ustar_header(b"000000001.jpg", b"77777777777\0") + b"\xff\xd8" + b"\0" * 1022)
    write(folder, "claims_base256_huge_member.tar",
          ustar_header(b"000000001.jpg", b"\x80" + b"\0" * 3 + b"\x7f" + b"\xff" * 7) + b"\0" * 1024)
    pax_huge = tar_bytes([("000000001.jpg", b"\xff\xd8\xff\xd9")])
    pax_huge = pax_huge.replace(b"000000001.jpg", b"000000001.jpg", 1)
    write(folder, "zeros_20MiB_member.tar.gz",
          tar_bytes([("000000001.jpg", b"\0" * (20 << 20)), ("000000001.txt", b"big"),
                     ("000000002.jpg", jpeg), ("000000002.txt", b"after the big one")], gz=True))
    write(folder, "zeros_30x2MiB.tar.gz",
          tar_bytes([("%09d.%s" % (k // 2, "jpg" if k % 2 == 0 else "txt"), b"\0" * (2 << 20) if k % 2 == 0 else b"c")
                     for k in range(60)], gz=True))
    # A 6 MB caption in every skipped sample (no image): parsed once per sample, once per pass.
    write(folder, "big_caption_no_image.tar.gz",
          tar_bytes([("000000001.json", b'{"caption": "' + b"x" * (6 << 20) + b'"}')], gz=True))
    write(folder, "big_caption_bad_image.tar.gz",
          tar_bytes([("000000001.jpg", b"bad"), ("000000001.json", b'{"caption": 5, "pad": "' + b"y" * (6 << 20) + b'"}')],
                    gz=True))
    write(folder, "deep_json.tar.gz",
          tar_bytes([("000000001.jpg", jpeg), ("000000001.json", b"[" * 1_000_000), ("000000001.txt", b"fallback")],
                    gz=True))
    write(folder, "same_key_3000_members.tar.gz",
          tar_bytes([("000000001.e%d" % k, b"") for k in range(3000)] + [("000000001.jpg", jpeg)], gz=True))
    write(folder, "long_member_name.tar.gz",
          tar_bytes([("a" * 100_000 + ".jpg", jpeg), ("a" * 100_000 + ".txt", b"long")], gz=True))
    write(folder, "dot_names.tar", tar_bytes([(".jpg", jpeg), ("x.", b"y"), ("/abs/1.jpg", jpeg), ("../2.txt", b"z")]))
    links = io.BytesIO()
    with tarfile.open(fileobj=links, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind in (("1.jpg", tarfile.SYMTYPE), ("2.jpg", tarfile.LNKTYPE), ("3.jpg", tarfile.DIRTYPE),
                           ("4.jpg", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd"
            t.addfile(info)
    write(folder, "links_and_devices.tar", links.getvalue())
    write(folder, "not_a_tar.tar", b"j" * 2000)
    write(folder, "gzip_of_garbage.tar.gz", gzip.compress(b"\x01" * 5000, mtime=0))
    write(folder, "empty.tar", b"")


# ---- cc_sbu_align annotations

def annotations():
    folder = "cc_sbu_align"
    write(folder, "valid.json", b'{"annotations": [{"image_id": "2", "caption": "The image shows a dog."}, '
                                b'{"image_id": 7, "caption": "Numeric id."}]}')
    write(folder, "deep_array.json", b'{"annotations": ' + b"[" * 20_000 + b"]" * 20_000 + b"}")
    write(folder, "deep_in_entry.json", b'{"annotations": [{"image_id": "1", "caption": ' + b"[" * 20_000 + b"]" * 20_000 + b"}]}")
    write(folder, "deep_unclosed.json", b"[" * 90_000)
    write(folder, "traversal_dotdot.json", b'{"annotations": [{"image_id": "../../secret", "caption": "c"}]}')
    write(folder, "traversal_absolute.json", b'{"annotations": [{"image_id": "/etc/passwd\\u0000", "caption": "c"}]}')
    write(folder, "traversal_nul.json", b'{"annotations": [{"image_id": "1\\u0000/../../x", "caption": "c"}]}')
    write(folder, "traversal_inner.json", b'{"annotations": [{"image_id": "a/../../../b", "caption": "c"}]}')
    write(folder, "long_id.json", b'{"annotations": [{"image_id": "' + b"9" * 20_000 + b'", "caption": "c"}]}')
    write(folder, "long_component.json", b'{"annotations": [{"image_id": "' + b"a" * 300 + b'", "caption": "c"}]}')
    write(folder, "big_number_id.json", b'{"annotations": [{"image_id": 123456789012345678901234567890, "caption": "c"}]}')
    write(folder, "negative_id.json", b'{"annotations": [{"image_id": -5, "caption": "c"}]}')
    write(folder, "float_id.json", b'{"annotations": [{"image_id": 1.5, "caption": "c"}]}')
    write(folder, "object_id.json", b'{"annotations": [{"image_id": {"a": [1, 2, 3]}, "caption": "c"}]}')
    write(folder, "caption_not_text.json", b'{"annotations": [{"image_id": "1", "caption": ["x", "y"]}]}')
    write(folder, "entry_not_object.json", b'{"annotations": ["' + b"z" * 50_000 + b'"]}')
    write(folder, "annotations_not_list.json", b'{"annotations": {"image_id": "1"}}')
    write(folder, "empty_list.json", b'{"annotations": []}')
    write(folder, "top_level_list.json", b'[{"image_id": "1", "caption": "c"}]')
    write(folder, "invalid_utf8.json", b'{"annotations": [{"image_id": "\xff\xfe", "caption": "\xc3"}]}')
    write(folder, "truncated.json", b'{"annotations": [{"image_id": "1", "capt')
    write(folder, "empty.json", b"")


if __name__ == "__main__":
    images()
    shards()
    annotations()
