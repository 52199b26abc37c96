"""The command-line recipes (run them as scripts: ``python recipes/uni_mlip_roco.py``); their pieces live in ``unimlip_kit.train``.

From the repository root (``python -m pytest`` puts it on ``sys.path``) ``from recipes import uni_mlip_roco`` gives
the training recipe's ``main(argv)``, which is how the tests drive it.
"""
