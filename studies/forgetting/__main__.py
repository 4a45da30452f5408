"""``python -m studies.forgetting``: see :mod:`studies.forgetting.run`."""

from studies.forgetting.run import main

main()
