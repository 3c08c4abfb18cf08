"""Facades archive handling on small synthetic archives in the official layout: getting the archive
(local copy, environment variable), and every bad-input case failing before any output is written,
or being skipped on request."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from asap.data import facades
from asap.data.common import DataError, PrepareOptions

STEMS = ["cmp_b0001", "cmp_b0002", "cmp_b0061", "cmp_b0062", "cmp_b0063"]  # 2 test, 3 train


def jpg_bytes(h, w, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def label_bytes(h, w, seed, values=range(1, 13)):
    """A palette PNG of label indices, like the archive's (mode P)."""
    lab = np.random.default_rng(seed).choice(np.asarray(list(values), dtype=np.uint8), (h, w))
    img = Image.frombytes("P", (w, h), lab.tobytes())
    img.putpalette(sum(([k * 20 % 256, 255 - k * 20 % 256, k * 7 % 256] for k in range(256)), []))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write_archive(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("base/", b"")
        z.writestr("base/label_names.txt", "1 background 1\n2 facade 2\n3 window 10\n")
        for name, data in members.items():
            z.writestr(name, data)
    return path


def good_members(h=30, w=20):
    members = {}
    for i, stem in enumerate(STEMS):
        members[f"base/{stem}.jpg"] = jpg_bytes(h, w, i)
        members[f"base/{stem}.png"] = label_bytes(h, w, i)
        members[f"base/{stem}.xml"] = b"<annotation/>"
    return members


def prepare(archive, out, skip_bad=False):
    logs = []
    info = facades.prepare_facades(archive, out, facades.FacadesConfig(),
                                   PrepareOptions(16, 16, workers=1, skip_bad=skip_bad), log=logs.append)
    return info, "\n".join(logs)


def test_small_archive_prepares_with_the_authors_split(tmp_path):
    archive = write_archive(tmp_path / "CMP_facade_DB_base.zip", good_members())
    info, _ = prepare(archive, tmp_path / "out" / "facades-16x16")
    assert info["splits"] == {"train": 3, "test": 2}
    assert info["label_names"][:4] == ["unused", "background", "facade", "window"]
    assert info["skipped"] == []


@pytest.mark.parametrize("case,member,match", [
    ("unpaired", "base/cmp_b0062.jpg", r"cmp_b0062\.jpg: photo without its label map"),
    ("corrupt", "base/cmp_b0061.jpg", r"cmp_b0061\.jpg: cannot be decoded"),
    ("out_of_range", "base/cmp_b0002.png", r"cmp_b0002\.png: label values \[0, 13\] are outside the allowed range 1\.\.12"),
    ("size", "base/cmp_b0063.png", r"cmp_b0063\.png: is 20x31 \(WxH\) but its image .*cmp_b0063\.jpg is 20x30"),
    ("colour_label", "base/cmp_b0001.png", r"cmp_b0001\.png: expected a single-channel index map"),
])
def test_bad_pair_fails_naming_the_file_and_writes_nothing(tmp_path, case, member, match):
    members = good_members()
    if case == "unpaired":
        del members["base/cmp_b0062.png"]
    elif case == "corrupt":
        members[member] = members[member][:200]  # truncated JPEG
    elif case == "out_of_range":
        members[member] = label_bytes(30, 20, 9, values=[0, 5, 13])
    elif case == "size":
        members[member] = label_bytes(31, 20, 9)
    elif case == "colour_label":
        buf = io.BytesIO()
        Image.new("RGB", (20, 30), (255, 0, 0)).save(buf, "PNG")
        members[member] = buf.getvalue()
    archive = write_archive(tmp_path / "CMP_facade_DB_base.zip", members)
    out = tmp_path / "out" / "facades-16x16"
    with pytest.raises(DataError, match=match) as err:
        prepare(archive, out)
    assert "skip_bad" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob("out/*"))  # nor any staging folder

    info, log = prepare(archive, out, skip_bad=True)
    stem = member.split("/")[1][:-4]
    assert [s["stem"] for s in info["skipped"]] == [stem]
    assert "skipped 1 bad pair" in log and stem in log
    assert sum(info["splits"].values()) == 4
    assert not list(out.glob(f"*/*/{stem}.png"))
    assert json.loads((out / "dataset.json").read_text())["skipped"][0]["stem"] == stem


def test_missing_and_wrong_archives(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.zip not found"):
        facades.list_pairs(tmp_path / "nowhere.zip", facades.FacadesConfig())
    not_zip = tmp_path / "CMP_facade_DB_base.zip"
    not_zip.write_text("<html>404</html>")
    with pytest.raises(DataError, match=r"CMP_facade_DB_base\.zip is not a readable zip"):
        facades.list_pairs(not_zip, facades.FacadesConfig())
    other = write_archive(tmp_path / "other.zip", {"extended/cmp_x0001.jpg": jpg_bytes(8, 8, 0)})
    with pytest.raises(DataError, match=r"other\.zip holds no base/cmp_bNNNN\.jpg"):
        facades.list_pairs(other, facades.FacadesConfig())


def test_fetch_copies_the_local_archive_and_checks_it(tmp_path, monkeypatch):
    archive = write_archive(tmp_path / "mine.zip", good_members())
    monkeypatch.setenv(facades.ARCHIVE_ENV, str(archive))
    assert facades.resolve_archive(None) == str(archive)
    assert facades.resolve_archive("elsewhere.zip") == "elsewhere.zip"  # the params key wins
    dest = facades.fetch_archive(tmp_path / "raw" / "CMP_facade_DB_base.zip", facades.resolve_archive(None),
                                 log=lambda _: None)
    assert dest.read_bytes() == archive.read_bytes()
    with pytest.raises(DataError, match=r"missing\.zip not found .*ASAP_FACADES_ARCHIVE"):
        facades.fetch_archive(tmp_path / "raw2" / "x.zip", str(tmp_path / "missing.zip"), log=lambda _: None)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        facades.fetch_archive(tmp_path / "raw3" / "x.zip", str(bad), log=lambda _: None)
    assert not (tmp_path / "raw3" / "x.zip").exists()


def test_download_failure_says_how_to_work_offline(tmp_path):
    with pytest.raises(DataError, match=r"could not download .*ASAP_FACADES_ARCHIVE"):
        facades.fetch_archive(tmp_path / "x.zip", None, url="http://127.0.0.1:9/CMP_facade_DB_base.zip",
                              log=lambda _: None)
    assert not (tmp_path / "x.zip").exists()
