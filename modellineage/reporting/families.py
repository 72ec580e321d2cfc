"""What each evidence family can and cannot show, and its audits' names in words, for the report.

A small registry keyed by family name (the audit's pytest marker, as recorded in evidence.json
``audits[].family``). The report groups its details by family in :data:`ORDER`, opens each group with
the family's one-sentence scope, and names each audit row in words (the test id stays visible).

A new family (``training``, ``behaviour``, ...) registers itself with :func:`register` from its own
sub-package, or is listed here; a family nobody registered still appears, after the known ones, under
a title made from its name and a sentence saying that its scope is not described (:func:`family`).
Audit titles fall back to the judgement's claim, then to the test function's name in words
(:func:`audit_title`), so an unknown audit is never dropped or unnamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Family", "ORDER", "register", "family", "families_in_order", "audit_name", "audit_title"]


@dataclass(frozen=True)
class Family:
    """One evidence family as the report presents it."""

    name: str
    title: str
    scope: str
    """One sentence: what this family can show, and what it cannot."""
    audits: Mapping[str, str] = field(default_factory=dict)
    """Audit function name (``test_...``) -> its name in words."""
    registered: bool = True


_REGISTRY: dict[str, Family] = {}

#: Families in the order the report shows them; registered families not listed follow in name order.
ORDER = ("tokenizer", "weights", "independence", "architecture", "reuse", "catalog", "compute", "training",
         "behaviour", "claims")


def register(entry: Family) -> Family:
    """Add or replace a family's entry (a family's sub-package may call this at import)."""
    _REGISTRY[entry.name] = entry
    return entry


def family(name: str) -> Family:
    """The registered entry, or a fallback that still presents an unknown family's audits."""
    found = _REGISTRY.get(name)
    if found is not None:
        return found
    return Family(name, name.replace("_", " ").capitalize() or "Other",
                  f"No description of what the '{name}' family can and cannot show is registered "
                  "(modellineage/reporting/families.py); read each audit's own claim and bound.", {}, False)


def families_in_order(names) -> list[str]:
    """``names`` (families present in a run) in report order: :data:`ORDER`, then the rest alphabetically."""
    present = set(names)
    return [n for n in ORDER if n in present] + sorted(present.difference(ORDER))


def audit_name(nodeid: str) -> str:
    """``audits/test_x.py::test_name[param]`` -> ``test_name``."""
    return nodeid.split("::")[-1].split("[")[0]


def audit_title(record: Mapping[str, Any]) -> str:
    """An audit's name in words: the family's title for it, else its judgement's claim, else its function name."""
    name = audit_name(record.get("nodeid", ""))
    title = family(record.get("family", "")).audits.get(name)
    if title:
        return title
    judgement = record.get("judgement")
    claim = judgement.get("claim") if isinstance(judgement, Mapping) else None
    if claim:
        return str(claim)[:1].upper() + str(claim)[1:]
    words = name.removeprefix("test_").replace("_", " ").strip()
    return (words[:1].upper() + words[1:]) or name


for _entry in (
    Family("tokenizer", "Tokenizer",
           "Whether the vocabulary, its ids and its merge rules were reused or extended from the reference; it "
           "cannot show anything about the weights, since independently trained models openly share tokenizers.",
           {"test_vocabulary_overlap": "Vocabulary shared with the reference",
            "test_id_alignment": "Shared tokens keep their ids",
            "test_vocabulary_extension": "One vocabulary extends the other",
            "test_merge_rules": "Merge rules in the same order",
            "test_special_tokens_recorded": "Special tokens side by side",
            "test_encoding_agreement_recorded": "Probe texts tokenized the same way"}),
    Family("weights", "Weights",
           "How alike the trained weights are, tensor by tensor (centred similarity, fingerprints, experts), against "
           "bounds calibrated on independent and derived pairs; it cannot see through re-parametrisation or long "
           "further training, which lower these figures while the origin stays the same.",
           {"test_weight_similarity": "Weight similarity by category",
            "test_no_tensor_signature_matches": "No tensor's fingerprint matches",
            "test_moe_experts": "Experts compared one by one"}),
    Family("independence", "Independence test",
           "A calibrated p-value for 'the two models were trained from independent starts' that permuting, rescaling "
           "or sign-flipping weights cannot change; it needs both models' MLP weights and cannot tell which of two "
           "related models came first.",
           {"test_independence_pvalue": "Independence test (p-value)"}),
    Family("architecture", "Architecture and integrity",
           "Whether each config tells the truth about its weights, the weights are finite and the claimed parameter "
           "count is right; a shared config is no evidence of lineage, since independent models often share one.",
           {"test_config_matches_weights": "Config matches the weights",
            "test_weights_are_finite": "No NaN or Inf in the weights",
            "test_parameter_count_matches_claim": "Claimed parameter count",
            "test_config_comparison_recorded": "Configs side by side"}),
    Family("reuse", "Byte-identical reuse",
           "Whether trained tensors were copied byte for byte (SHA-256), which does not happen by chance; finding "
           "none shows little, since any fine-tuning step changes every byte.",
           {"test_no_exact_tensor_reuse": "No tensor copied byte for byte"}),
    Family("catalog", "Catalog of known models",
           "The target's config and tokenizer against well-known base models (each entry cites its public config); "
           "it only knows the models in the catalog and compares no weights.",
           {"test_nearest_known_architectures": "Nearest known architectures",
            "test_tokenizer_not_from_catalog": "Tokenizer is none of the catalog's"}),
    Family("compute", "Compute claims",
           "Whether the claimed active parameters, tokens and GPU hours fit together at a utilisation real runs "
           "reach; it checks plausibility, not what was actually run.",
           {"test_active_parameters_match_claim": "Claimed active parameter count",
            "test_claimed_compute_is_plausible": "Claimed compute is plausible"}),
    Family("training", "Training records",
           "What checkpoint chains and training logs shipped with the model say about its history; records can "
           "show a consistent history but not prove that no other run happened.",
           {"test_first_checkpoint_is_initialisation": "First checkpoint is an initialisation",
            "test_checkpoint_link": "Each checkpoint follows from the one before",
            "test_target_descends_from_last_checkpoint": "Target descends from the last checkpoint",
            "test_no_jump_toward_reference": "No jump toward the reference between checkpoints",
            "test_log_first_loss": "Log starts at an untrained model's loss",
            "test_log_loss_falls": "Logged loss falls",
            "test_log_tokens_and_steps": "Logged tokens and steps agree",
            "test_log_lr_schedule": "Logged learning-rate schedule",
            "test_logged_tokens_match_claim": "Logged tokens match the claim"}),
    Family("behaviour", "Behaviour",
           "How alike the models' outputs are on probe texts; output similarity can come from shared data or "
           "distillation as well as shared weights, so on its own it cannot show derivation.",
           {"test_knowledge_cutoff": "Knowledge cutoff on dated events",
            "test_next_token_divergence": "Next-token distributions (divergence)",
            "test_continuation_agreement": "Continuations agree",
            "test_refusal_behaviour": "Refusals on the same requests",
            "test_representation_similarity": "Hidden representations alike (CKA)"}),
    Family("claims", "Claim coverage",
           "Whether every claim of the plan was measured and judged by at least one audit; it says nothing about "
           "whether a claim holds.",
           {"test_claim_was_tested": "Every claim about the reference was tested",
            "test_catalog_claim_was_tested": "The catalog claim was tested"}),
):
    register(_entry)
