"""Studies of what titan_phases' schedules do to a model (``python -m studies.<name>``).

Runners outside the installed package, like ``bench/``: each study launches ordinary
``python -m titan_phases.train`` jobs and measures their outcome. See STUDIES.md.
"""
