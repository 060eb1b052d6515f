"""Handler and driver notes for the synthetic generator, English and Chinese.

A note either carries its class's evidence (a class template) or is a routine
note drawn from the same pool as a normal parcel's. Routine notes include near
misses ("no visible dmg", "temp checked ok") so keywords alone do not decide.
English notes get hub-speak abbreviations, casing changes and typos; some Chinese
notes mix in English or numbers, as real handlers write them.
"""
from __future__ import annotations

import re

import numpy as np

EVIDENCE_EN: dict[str, tuple[str, ...]] = {
    "damaged": (
        "corner crushed", "box dented on {side} side", "package damaged, {side} corner crushed",
        "outer carton torn, contents visible", "hole in box on {side} side",
        "carton crushed under other pallets", "dented and torn lid", "dropped by forklift, box damaged",
        "crushed corner, please inspect", "received with damage to outer box", "box caved in on top",
        "rip in carton {side} side, taped over by driver",
    ),
    "wet": (
        "outer carton damp", "water damage on bottom", "box wet, left in rain", "package soaked on {side} side",
        "water stains on carton", "carton soggy, moisture inside?", "wet package received from truck",
        "damp box, tide marks on side", "leak from trailer roof, box wet", "bottom of carton wet and soft",
    ),
    "temperature_excursion": (
        "reefer alarm at {time}", "temp log above 8C", "temperature high {temp}C on arrival",
        "cold chain break, logger {temp}C", "reefer unit failed, package warm",
        "temperature excursion flagged by logger", "ice packs melted, package warm",
        "temperature out of range {time}-{time2}", "package warm to touch, reefer off",
        "logger shows {temp}C for {n}h",
    ),
    "tampered": (
        "seal tape cut", "tape re-applied, please check", "seal broken on arrival", "box opened and retaped",
        "security tape torn, possible tamper", "tamper evident seal void", "lid opened, different tape color",
        "seal number mismatch, tape cut", "package looks opened, contents shifted",
    ),
}
EVIDENCE_ZH: dict[str, tuple[str, ...]] = {
    "damaged": ("外箱破损", "纸箱压坏，{side_zh}角凹陷", "箱子破了一个洞", "外包装撕裂", "运输途中摔落，外箱变形",
                "外箱破损 dmg", "箱角压扁，请检查"),
    "wet": ("外箱潮湿", "纸箱被水浸湿", "包裹淋雨，底部湿了", "外箱有水渍", "箱子受潮发软", "外箱潮湿 wet"),
    "temperature_excursion": ("冷链温度异常", "冷藏车故障，温度超标", "温度超过8度", "记录仪报警 {temp}C",
                              "冰袋已融化，货物温度高", "冷链断链 {time}"),
    "tampered": ("封条破损", "封箱胶带被割开", "箱子有被打开的痕迹", "胶带重新粘贴过", "封条号不符，请核查",
                 "封条破损 seal"),
}
ROUTINE_EN: tuple[str, ...] = (
    "scanned at dock {dock}", "ok", "received", "package received in good condition", "no issues",
    "checked, looks fine", "arrived {time}", "transfer to {hub}", "handed to driver", "on pallet {n}",
    "sorted lane {n}", "awaiting pickup", "scan ok", "loaded on truck {n}", "customer pickup",
    "delivered to bay {dock}", "fragile sticker, handle with care", "heavy package", "relabelled at hub",
    "temp checked ok", "no visible damage", "late arrival, {n}h delay",
)
ROUTINE_ZH: tuple[str, ...] = ("转运", "已扫描", "正常", "已签收", "外箱完好", "中转 {hub}", "等待提货", "已装车",
                               "货物正常", "{dock}号门已扫描")
ABBREVIATIONS: dict[str, str] = {
    "package": "pkg", "damaged": "dmg", "damage": "dmg", "corner": "crnr", "received": "rcvd",
    "temperature": "temp", "please": "pls", "high": "hi", "with": "w/", "good": "gd", "condition": "cond",
    "different": "diff", "number": "#", "customer": "cust", "and": "&",
}
SIDES_EN = ("left", "right", "top", "bottom", "front", "back")
SIDES_ZH = ("左", "右", "上", "下", "前", "后")


def make_note(rng: np.random.Generator, cls: str, evidence: bool, chinese: bool, hubs: list[str]) -> str:
    """One note; `evidence` says whether it names the class's problem (a normal parcel has none)."""
    evidence = evidence and cls != "normal"
    if chinese:
        pool = EVIDENCE_ZH[cls] if evidence else ROUTINE_ZH
        text = _fill(rng, str(rng.choice(pool)), hubs)
        if rng.random() < 0.2:
            text += "，" + _fill(rng, str(rng.choice(ROUTINE_ZH)), hubs)
        return text
    pool = EVIDENCE_EN[cls] if evidence else ROUTINE_EN
    text = _fill(rng, str(rng.choice(pool)), hubs)
    if evidence and rng.random() < 0.25:
        text += str(rng.choice(["; ", ", ", " - "])) + _fill(rng, str(rng.choice(ROUTINE_EN)), hubs)
    return _roughen(rng, text, hubs)


def _fill(rng: np.random.Generator, template: str, hubs: list[str]) -> str:
    """Fill the template's slots with plausible values."""
    slots = {
        "side": str(rng.choice(SIDES_EN)), "side_zh": str(rng.choice(SIDES_ZH)),
        "time": f"{int(rng.integers(24)):02d}:{int(rng.integers(60)):02d}",
        "time2": f"{int(rng.integers(24)):02d}:{int(rng.integers(60)):02d}",
        "temp": f"{rng.uniform(9, 32):.1f}".rstrip("0").rstrip("."), "dock": str(int(rng.integers(1, 40))),
        "n": str(int(rng.integers(1, 30))), "hub": str(rng.choice(hubs)),
    }
    return template.format(**slots)


def _roughen(rng: np.random.Generator, text: str, hubs: list[str]) -> str:
    """Make an English note look typed on a handheld: abbreviations, casing, prefixes, typos."""
    if rng.random() < 0.5:
        text = re.sub(r"[A-Za-z]+", lambda m: _abbreviate(rng, m.group(0)), text)
    if rng.random() < 0.2:
        text = typo(rng, text)
        if rng.random() < 0.3:
            text = typo(rng, text)
    roll = rng.random()
    if roll < 0.1:
        text = text.upper()
    elif roll < 0.4:
        text = text[:1].upper() + text[1:]
    if rng.random() < 0.15:
        text = str(rng.choice([f"{rng.choice(hubs)}: ", f"{int(rng.integers(24)):02d}:{int(rng.integers(60)):02d} ",
                               "NB ", "fyi "])) + text
    return text


def _abbreviate(rng: np.random.Generator, word: str) -> str:
    short = ABBREVIATIONS.get(word.lower())
    return short if short is not None and rng.random() < 0.7 else word


def typo(rng: np.random.Generator, text: str) -> str:
    """One keyboard slip inside a word: swapped, dropped or doubled letter."""
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    if len(letters) < 3:
        return text
    i = int(rng.choice(letters[:-1]))
    op = int(rng.integers(3))
    if op == 0 and text[i + 1].isalpha():
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    if op == 1:
        return text[:i] + text[i + 1:]
    return text[:i] + text[i] + text[i:]
