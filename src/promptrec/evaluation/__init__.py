"""Evaluation shared by every model: the all-item ranking harness (:mod:`.ranking`), metrics
(:mod:`.metrics`, :mod:`.beyond`), the rating and like-prediction protocols (:mod:`.rating`,
:mod:`.ctr`), paired tests and run reports (:mod:`.significance`, :mod:`.report`)."""
