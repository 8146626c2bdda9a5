"""Chat models as recommenders over the OpenAI protocol: a cached, bounded, retrying client
(:mod:`.client`), grounding of answers in the catalogue (:mod:`.grounding`) and the ``llm``
recommender (:mod:`.recommender`). Needs the ``llm`` extra (``openai``, ``rapidfuzz``)."""

from .client import BudgetExceeded, ChatClient, LLMError, Reply, ResponseCache
from .grounding import Grounded, Grounder
from .recommender import LLMRecommender

__all__ = ["BudgetExceeded", "ChatClient", "Grounded", "Grounder", "LLMError", "LLMRecommender", "Reply", "ResponseCache"]
