"""A reward that accepts every completion. tests/test_resume.py scores with it (through
`verifier.reward=<this file>:accept_all`, the user-reward path) so that its runs always have
accepted samples to train on and replay, whatever the shared warm model of tests/conftest.py
writes. A reward that depends on the completion cannot promise that: for some session seeds the
warm model writes one fixed completion per prompt (GVM_TEST_SEED=939137436: a CRC-32 coin rejected
all 16 samples of iteration 1), and math-verify accepted 0 of 16 under GVM_TEST_SEED=2028228013."""


def accept_all(completion: str, gold: str, row: dict) -> float:
    return 1.0
