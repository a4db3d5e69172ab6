"""The built-in components, registered through the same hooks as third-party plugins.

Factories and options are lazy ``"module:attr"`` references: listing them imports no torch, and a
component's module is imported when the component is first built. Adding a built-in is one
``register`` line here plus its module. Scorers and estimators say whether their result can change
with the run's seed (``seeded=``); the owl_outlier, block_influence and gradient_norm scorers state
nothing and are treated as seeded.
"""

from __future__ import annotations

from layerif_core.hookspecs import hookimpl

_EST = "layerif_core.estimators"
_EST_OPTS = "layerif_core.estimators.options"
_SCO = "layerif_core.scorers"
_SCO_OPTS = "layerif_core.scorers.options"
_ALLOC_OPTS = "layerif_core.allocators.options"
_AGG = "layerif_core.aggregators"


@hookimpl
def layerif_register_estimators(register) -> None:
    fisher = f"{_EST_OPTS}:fisher_uses_seed"  # the true Fisher samples labels with the seed
    register("ekfac", f"{_EST}.ekfac:EKFAC", options=f"{_EST_OPTS}:EKFACOptions", seeded=fisher,
             help="EK-FAC (default): K-FAC eigenbases with per-example refitted eigenvalues.")
    register("kfac", f"{_EST}.kfac:KFAC", options=f"{_EST_OPTS}:KFACOptions", seeded=fisher,
             help="K-FAC: per-module A ⊗ S curvature, inverse in the Kronecker eigenbasis.")
    register("lissa", f"{_EST}.lissa:Lissa", options=f"{_EST_OPTS}:LissaOptions", seeded=True,
             help="LiSSA recursion with layer-restricted curvature-vector products.")
    register("exact", f"{_EST}.exact:Exact", options=f"{_EST_OPTS}:ExactOptions", seeded=fisher,
             help="Explicit per-layer curvature block and a solve (tiny models; the test oracle).")
    register("datainf", f"{_EST}.datainf:DataInf", options=f"{_EST_OPTS}:DataInfOptions",
             seeded=False,
             help="DataInf (Kwon et al. 2024), the LayerIF authors' estimator: streamed in "
                  "Kronecker form on full weights, stored per-example gradients on LoRA tensors.")
    register("grad_dot", f"{_EST}.grad_dot:GradDot", seeded=False,
             help="Gradient inner product (no curvature).")
    register("grad_cosine", f"{_EST}.grad_cosine:GradCosine", seeded=False,
             help="Cosine of query and training gradients per layer (no curvature).")


@hookimpl
def layerif_register_aggregators(register) -> None:
    register("helpful_sum", f"{_AGG}:HelpfulSum",
             help="LayerIF's +VE: S[l] = Σ_i max(I[l, i], 0), helpful influence; higher = less mature.")
    register("top_helpful", f"{_AGG}:TopHelpful", options=f"{_AGG}:TopOptions",
             help="LayerIF's TOP-25%: the sum of the ⌈fraction·N⌉ largest I[l, i]; higher = less mature.")
    register("net_sum", f"{_AGG}:NetSum",
             help="LayerIF's ALL: S[l] = Σ_i I[l, i], net helpful influence; higher = less mature.")
    register("harmful_sum", f"{_AGG}:HarmfulSum",
             help="Reverse experiment: Σ_i max(−I[l, i], 0), harmful influence; higher = less mature.")
    register("top_harmful", f"{_AGG}:TopHarmful", options=f"{_AGG}:TopOptions",
             help="Reverse TOP-k: the sum of the ⌈fraction·N⌉ largest −I[l, i]; higher = less mature.")
    register("abs_sum", f"{_AGG}:AbsSum", help="S[l] = Σ_i |I[l, i]|; higher = less mature.")


@hookimpl
def layerif_register_scorers(register) -> None:
    register("layerif", f"{_SCO}.layerif:LayerIFScorer", seeded=f"{_SCO}.layerif:uses_seed",
             help="Per-layer influence (estimator + aggregator).")
    register("htsr_alpha", f"{_SCO}.htsr:HTSRScorer", options=f"{_SCO_OPTS}:HTSROptions", seeded=False,
             help="HT-SR power-law exponent α of each layer's ESD (AlphaPruning); lower = better.")
    register("owl_outlier", f"{_SCO}.owl:OWLScorer", options=f"{_SCO_OPTS}:OWLOptions",
             help="OWL outlier ratio of |W|·‖X‖ per block (Yin et al. 2023); higher = keep more.")
    register("block_influence", f"{_SCO}.block_influence:BlockInfluenceScorer",
             options=f"{_SCO_OPTS}:BlockInfluenceOptions",
             help="ShortGPT's block influence 1 − cos(h_in, h_out); higher = more important.")
    register("gradient_norm", f"{_SCO}.gradient_norm:GradientNormScorer",
             options=f"{_SCO_OPTS}:GradientNormOptions",
             help="‖∇ of the validation loss‖ per layer; higher = worse trained.")
    register("dlp", f"{_SCO}.dlp:DLPScorer", options=f"{_SCO_OPTS}:DLPOptions",
             help="DLP: median of |W|·‖X‖ over each block (Chen et al. 2025); higher = more sparsity.")
    register("lsa", f"{_SCO}.lsa:LSAScorer", options=f"{_SCO_OPTS}:LSAOptions",
             help="LSA: mean reconstruction error with half of the inputs pruned; higher = more sparsity.")
    register("alp", f"{_SCO}.alp:ALPScorer", options=f"{_SCO_OPTS}:ALPOptions",
             help="ALP: Σ|z-score| of squared gradients per block; higher = more sparsity.")
    register("uniform", f"{_SCO}.controls:UniformScorer", seeded=False,
             help="Control: every layer equal (uniform allocation).")
    register("random", f"{_SCO}.controls:RandomScorer", options=f"{_SCO_OPTS}:RandomOptions",
             seeded=f"{_SCO_OPTS}:random_uses_seed", help="Control: seeded U(0, 1) score per layer.")
    register("depth", f"{_SCO}.controls:DepthScorer", options=f"{_SCO_OPTS}:DepthOptions", seeded=False,
             help="Control: the layer index (deeper = more sparsity / experts), a depth ramp; "
                  "direction: falling mirrors it.")


@hookimpl
def layerif_register_allocators(register) -> None:
    sparsity, experts = "layerif_core.allocators.sparsity", "layerif_core.allocators.experts"
    register("uniform_sparsity", f"{sparsity}:UniformSparsity",
             options=f"{_ALLOC_OPTS}:UniformSparsityOptions",
             help="The same sparsity s for every layer (control).")
    register("alpha_pruning", f"{sparsity}:AlphaPruningSparsity",
             options=f"{_ALLOC_OPTS}:AlphaPruningOptions",
             help="AlphaPruning: scores mapped linearly onto [1-ε, 1+ε]·η, weighted mean = s.")
    register("owl_sparsity", f"{sparsity}:OWLSparsity", options=f"{_ALLOC_OPTS}:OWLSparsityOptions",
             help="OWL: s − mean(d) + d, worse-ness d min-maxed to [0, 2λ].")
    register("dlp_sparsity", f"{sparsity}:DLPSparsity", options=f"{_ALLOC_OPTS}:DLPSparsityOptions",
             help="DLP/LSA/ALP: s + e − mean(e), e = worse-ness min-maxed to [0, 2α], α per target.")
    register("atp_sparsity", f"{sparsity}:ATPSparsity", options=f"{_ALLOC_OPTS}:ATPSparsityOptions",
             help="ATP: sparsity rising by β per layer around the target (scores unused).")
    register("select", "layerif_core.allocators.select:Select", options=f"{_ALLOC_OPTS}:SelectOptions",
             help="The candidate allocation (scorer + allocator) with the best held-out metric after "
                  "the run's application.")
    register("alphalora_experts", f"{experts}:AlphaLoRAExperts",
             options=f"{_ALLOC_OPTS}:AlphaLoRAOptions",
             help="Experts per layer ∝ worse-ness^beta, min per layer, exact total (AlphaLoRA/LayerIF).")
    register("uniform_experts", f"{experts}:UniformExperts", options=f"{_ALLOC_OPTS}:ExpertOptions",
             help="Control: the same expert total spread evenly over the layers.")
    register("given_experts", f"{experts}:GivenExperts", options=f"{_ALLOC_OPTS}:GivenOptions",
             help="A user-given number of experts per layer.")

