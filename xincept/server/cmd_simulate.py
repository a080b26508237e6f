"""`xincept-server simulate`: a whole federation on one machine (Flower's simulation engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import (CacheDirOpt, NoPretrainedOpt, RandomBackbonesOpt, VerboseOpt, WeightsDirOpt, friendly_errors,
                                given_options, setting_option, setup_logging, warn_random_weights)

RoundsOpt = Annotated[int | None, setting_option("rounds", "--rounds", "-r", help="Federated rounds over the fused head (0: 10 for the local-epoch rules, 150 for fedsgd).")]
EpochsOpt = Annotated[int | None, setting_option("local_epochs", "--local-epochs", help="Local epochs per round at each site.")]
TestFoldOpt = Annotated[int | None, setting_option("test_fold", "--test-fold", help="Which grouped fold (0-4 at the default 20% test split) each site "
                        "holds out for testing: runs with folds 0 to 4 make a grouped 5-fold cross-validation.")]
StrategyOpt = Annotated[str | None, setting_option("strategy", "--strategy", help="auto (fedavg: 10 rounds x 3 local epochs of the centralized recipe; DP-SGD with --dp-epsilon), "
                        "fedsgd (one full-batch gradient step per round, server Adam, 3 heads x 150 rounds), fedavg, fedprox, fedadam, or a robust rule: "
                        "trimmed-mean, krum.")]
HeadMembersOpt = Annotated[int | None, setting_option("head_members", "--head-members", help="Heads trained one after another (own initialisation and dropout "
                            "masks) whose softmax is averaged and whose embeddings feed XGBoost side by side; every round still "
                            "carries one head. 0: 3 for fedsgd, 1 for the others (and with --dp-epsilon).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from OUT/checkpoint.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Discard OUT/checkpoint of an earlier run and start over "
                                        "(without --resume or --fresh such a folder is refused).")]
XgbModeOpt = Annotated[str | None, setting_option("xgb_mode", "--xgb-mode", help="Global classifier: histogram (federated XGBoost, exact), bagging, or none (head softmax).")]
DisclosureOpt = Annotated[str | None, setting_option("disclosure", "--disclosure", help="What validation counts may leave a site: suppress (cells below --min-cell-count withheld), laplace (noise, --disclosure-epsilon) or none.")]
MinCellOpt = Annotated[int | None, setting_option("min_cell_count", "--min-cell-count", help="Smallest count a site releases (suppress policy).")]
DpEpsilonOpt = Annotated[float | None, setting_option("dp_epsilon", "--dp-epsilon", help="DP-SGD at every site (Opacus): target epsilon per site for the whole run; 0 = off.")]
DpDeltaOpt = Annotated[float | None, setting_option("dp_delta", "--dp-delta", help="DP delta per site.")]
DpModeOpt = Annotated[str | None, setting_option("dp_mode", "--dp-mode", help="With --dp-epsilon: head (DP-SGD on the fused head; XGBoost, feature sums and counts outside it) or whole-model (a linear head by full-batch DP gradient descent; every release of a site, its test counts included, under its one epsilon; no XGBoost).")]
DpUnitOpt = Annotated[str | None, setting_option("dp_unit", "--dp-unit", help="Whole-model DP's privacy unit: image, or patient (the site's patient groups, each clipped as one).")]
DpStepsOpt = Annotated[int | None, setting_option("dp_steps", "--dp-steps", help="Whole-model DP: full-batch gradient steps (each one message per site); 0: 80 below --dp-epsilon 5 (120 from 2 with --secure-aggregation), 160 from 5.")]
SecureAggOpt = Annotated[bool | None, setting_option("secure_aggregation", "--secure-aggregation/--no-secure-aggregation", help="Sum the head updates by secure aggregation: the server learns only their sum (four messages per round; FedAvg or FedProx).")]
FedInputSizeOpt = Annotated[int | None, setting_option("input_size", "--input-size", help="Backbone input size in pixels; 0: 224 (the thesis), 299 with --dp-mode whole-model.")]
FedBackbonesOpt = Annotated[str | None, setting_option("backbones", "--backbones", help="Comma-separated timm backbone names (the thesis pair by default).")]
FedGroupBlockOpt = Annotated[int | None, setting_option("group_block", "--group-block", help="Consecutive file numbers per patient group (used when no manifest group column).")]
FedPrecisionOpt = Annotated[str | None, setting_option("precision", "--precision", help="Embedding numerics: auto (bf16 on CPUs with AVX-512 BF16, fp16 on CUDA) or fp32.")]
SeedOpt = Annotated[int | None, setting_option("seed", "--seed", help="Seed for partitions, splits and training.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML file of federation settings (keys as in FedSettings, dashes or underscores).")]


@friendly_errors
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/simulation"),
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Data folder: DIR/<class>/<image>, or DIR/<site>/<class>/<image> with --partition folders.")] = None,
    sites: Annotated[int, typer.Option("--sites", "-n", help="Number of simulated hospital sites.")] = 4,
    partition: Annotated[str, typer.Option("--partition", help="iid, dirichlet:ALPHA, label-skew:K or folders (whole patient groups per site).")] = "iid",
    demo: Annotated[bool, typer.Option("--demo", help="Generate a small SYNTHETIC image set (no data needed) with tiny backbones: a quick offline demonstration.")] = False,
    rounds: RoundsOpt = None,
    local_epochs: EpochsOpt = None,
    strategy: StrategyOpt = None,
    head_members: HeadMembersOpt = None,
    xgb_mode: XgbModeOpt = None,
    no_pretrained: NoPretrainedOpt = False,
    random_backbones: RandomBackbonesOpt = None,
    weights_dir: WeightsDirOpt = None,
    cache_dir: CacheDirOpt = None,
    input_size: FedInputSizeOpt = None,
    backbones: FedBackbonesOpt = None,
    group_block: FedGroupBlockOpt = None,
    precision: FedPrecisionOpt = None,
    seed: SeedOpt = None,
    test_fold: TestFoldOpt = None,
    loso: Annotated[bool, typer.Option("--loso/--no-loso", help="Leave-one-site-out models in the validate phase.")] = True,
    reference: Annotated[bool, typer.Option("--reference/--no-reference", help="Also train the centralized reference on the same splits (the cost of federation).")] = True,
    disclosure: DisclosureOpt = None,
    min_cell_count: MinCellOpt = None,
    dp_epsilon: DpEpsilonOpt = None,
    dp_delta: DpDeltaOpt = None,
    dp_mode: DpModeOpt = None,
    dp_unit: DpUnitOpt = None,
    dp_steps: DpStepsOpt = None,
    secure_aggregation: SecureAggOpt = None,
    resume: ResumeOpt = False,
    fresh: FreshOpt = False,
    config: ConfigOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Simulate a federation of SITES hospitals on one machine and write the same bundle as a real run."""
    setup_logging(verbose)
    from xincept.common.fedconfig import FedSettings, load_settings_file
    from xincept.common.site import weights_label
    from xincept.server.simulate import run_simulated_federation

    from xincept.common.errors import SettingError

    if sites < 1:
        raise SettingError(f"--sites {sites}: give 1 or more simulated sites")
    values = given_options(dict(rounds=rounds, local_epochs=local_epochs, strategy=strategy, head_members=head_members, backbones=backbones, input_size=input_size,
                                group_block=group_block, precision=precision, seed=seed, test_fold=test_fold, resume=resume, xgb_mode=xgb_mode, loso=loso,
                                disclosure=disclosure, min_cell_count=min_cell_count, dp_epsilon=dp_epsilon, dp_delta=dp_delta,
                                dp_mode=dp_mode, dp_unit=dp_unit, dp_steps=dp_steps, secure_aggregation=secure_aggregation),
                           always=("loso",))  # leave-one-site-out is always on in simulation unless --no-loso
    values.update(out_dir=str(out), min_sites=sites)
    if no_pretrained:
        values["pretrained"] = False
    if random_backbones:
        values["random_backbones"] = random_backbones
    merged = {**(load_settings_file(config) if config else {}), **values}
    if demo:  # tiny backbones and images so the demonstration runs in a few minutes on a laptop CPU
        merged.update(backbones="test_resnet,test_efficientnet", input_size=96, pretrained=False)
        merged.setdefault("rounds", 30)  # fedsgd: one step per round; 30 fit the synthetic classes
        merged.setdefault("head_members", 1)  # one head: the demonstration stays within a few minutes
    settings = FedSettings.from_flat(merged)
    from xincept.server.interrupt import claim_out_dir, stop_on_interrupt

    settings.run_config()  # backbone, head and split settings refused here, not at the sites after start-up
    claim_out_dir(out, settings.resume, fresh)
    warn_random_weights(settings.backbones, settings.pretrained, settings.random_backbones)
    with stop_on_interrupt(out):
        metrics = run_simulated_federation(data, sites, partition, settings, demo=demo, cache_dir=cache_dir,
                                           weights_dir=weights_dir, reference=reference)
    g = metrics["global"]
    lo, hi = g["ci95"]["accuracy"]
    ref = metrics.get("centralized_reference", {}).get("head_softmax")
    typer.echo(
        f"federated accuracy {100 * g['accuracy']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}) over {g['n']} held-out images at "
        f"{len(metrics['sites'])} sites [{metrics['partition']['scheme']}, weights: {weights_label(metrics)}"
        f"{', SYNTHETIC data' if demo else ''}]"
        + (f"\ncentralized reference (same splits): {100 * ref['accuracy']:.1f}%" if ref else "")
        + f"\nbytes per site per round: {metrics['communication']['bytes_per_site_per_round']:,} "
        f"(full model: {metrics['communication']['full_model_bytes']:,})"
        + f"\nwrote {out / 'model'}, {out / 'metrics.json'}, {out / 'report.md'}"
    )
