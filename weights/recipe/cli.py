"""`paris eval` (score a paris-mini style model) and `paris build-mini` (rebuild it)."""


def register(sub) -> None:
    from . import evaluate

    ev = sub.add_parser("eval", help="evaluate a paris-mini style model (t2v, i2v, router, specialization)")
    evaluate.add_arguments(ev)
    ev.set_defaults(run=evaluate.run)

    from . import build

    rebuild = sub.add_parser("build-mini", help="rebuild weights/paris-mini from scratch (about 55 min on 2 cores)")
    build.add_arguments(rebuild)
    rebuild.set_defaults(run=build.run)
