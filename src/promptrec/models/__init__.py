"""The recommenders. Importing this package registers every built-in one in
:data:`promptrec.core.recommender.RECOMMENDERS`: each registers itself in its own module, and each
package imports its own.

- :mod:`.classic`: ``popularity``, ``itemknn``, ``bpr``, ``biased_mf``;
- :mod:`.sequential`: ``sasrec``, ``bsarec``;
- :mod:`.p5`: ``p5``, the language-model recommender (training, constrained generation, template search);
- :mod:`.cross_encoder`: ``cross_encoder``, a pretrained text encoder scoring (user, item) pairs;
- :mod:`.llm`: ``llm``, chat models over the OpenAI protocol;
- :mod:`.cold_start`: a generative model with semantic ids recommending items it never trained on.

:mod:`.torch_base` is the training loop the torch baselines share; :mod:`.lm_trainer` the one the
language-model recommenders (P5, the cross-encoder) share. Neither knows a model family.
"""

from . import classic, cold_start, cross_encoder, llm, p5, sequential  # noqa: F401  (each registers its recommenders)
