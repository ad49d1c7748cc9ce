"""Box math and building blocks: priors, coding, matching, loss, post-processing.

Import from the modules (``layers.priors``, ``layers.box_coding``, ...); their
hyper-parameters have no defaults here, the config holds them (``utils/config.py``).
"""
