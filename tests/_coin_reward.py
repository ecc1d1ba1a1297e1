"""A reward that accepts about half of all completions whatever the model: 1 when the CRC-32 of the
completion is even. tests/test_resume.py uses it (through `verifier.reward=<this file>:coin`, the
user-reward path) so that its runs always have accepted samples to train on and replay: the shared
warm model of tests/conftest.py is weak for some session seeds (GVM_TEST_SEED=2028228013 accepted
0 of 16 samples in iteration 1 under math-verify), and a resume test must not depend on it."""
import zlib


def coin(completion: str, gold: str, row: dict) -> float:
    return float(zlib.crc32(completion.encode("utf-8")) % 2 == 0)
