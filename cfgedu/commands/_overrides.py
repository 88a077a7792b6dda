"""`--key value` config overrides on the command line (train, describe, bench): any field of a preset's Experiment."""
from __future__ import annotations


def collect_overrides(parser) -> None:
    """Unknown `--key value` arguments become args.overrides instead of argparse errors."""
    parser.allow_abbrev = False  # so that an override such as --re is never taken for an option such as --resume
    parse_known_args = parser.parse_known_args

    def parse_with_overrides(args=None, namespace=None):
        namespace, extras = parse_known_args(args, namespace)
        namespace.overrides = extras
        return namespace, []

    parser.parse_known_args = parse_with_overrides


def override_pairs(words: list[str]) -> dict[str, str]:
    """["--steps", "10", "--lr=1e-3"] -> {"steps": "10", "lr": "1e-3"}."""
    pairs, index = {}, 0
    while index < len(words):
        word = words[index]
        if not word.startswith("--") or len(word) == 2:
            raise ValueError(f"expected --key value, got {word!r}")
        key, has_value, value = word[2:].partition("=")
        if not has_value:
            if index + 1 >= len(words):
                raise ValueError(f"--{key} needs a value")
            index, value = index + 1, words[index + 1]
        pairs[key] = value
        index += 1
    return pairs
