"""The operations of multi-subscription (chf/core/subscriptions.py): add an extra plan to a line, remove one.
Called by the API (`POST/DELETE /v1/lines/{line}/plans/{plan}`) and the CLI (`chf subscriber add-plan` /
`remove-plan`). Every check runs before anything changes; a refusal writes nothing."""

from __future__ import annotations

from chf.core.engine import Engine
from chf.core.model import OpResult
from chf.core.provisioning import Conflict, NotFound, _plan, _signals, get_line, idempotent
from chf.core.subscriptions import add_extra, extra_plans, remove_extra
from store.interface import Txn
from store.schema import ACTIVE, SUSPENDED


def _view(sub_id: int, plans: list[str], main: str | None) -> dict[str, object]:
    return {"line": sub_id, "plan": main, "extra_plans": plans}


def add_plan(
    txn: Txn,
    engine: Engine,
    line_ref: str,
    plan_name: str,
    *,
    now: int,
    actor: str,
    reason: str,
    idempotency_key: str | None = None,
) -> OpResult:
    """Start extra plan `plan_name` on a line in service now: its first fee, its allowances."""

    def run() -> OpResult:
        sub = get_line(txn, line_ref)
        ctx = engine.context(txn, sub, now)
        plan = _plan(engine, plan_name, now, ctx.account)
        if sub.state not in (ACTIVE, SUSPENDED):
            raise Conflict("line", f"line #{sub.id} is {sub.state}: extra plans are added to a line in service")
        if plan.name == sub.plan:
            raise Conflict("plan", f"plan {plan.name!r} is line #{sub.id}'s main plan")
        if plan.name in extra_plans(ctx.line_bs):
            # Already running: a repeated add charges nothing (as a plan change to the plan a line is on).
            return OpResult(_view(sub.id, extra_plans(ctx.line_bs), sub.plan))
        if any(a.shared for a in plan.allowances) or plan.pool is not None:
            raise Conflict("plan", f"plan {plan.name!r} has shared allowances or a pool: an account's plan")
        try:
            add_extra(ctx, plan, actor=actor, reason=reason)
        except ValueError:
            raise Conflict("wallet", f"the wallet cannot pay the fee of plan {plan.name!r}") from None
        ctx.flush()
        return OpResult(_view(sub.id, extra_plans(ctx.line_bs), sub.plan), _signals(txn, [sub.id], "reauth"))

    return idempotent(txn, idempotency_key, now, engine.config.idempotency_window, run)


def remove_plan(
    txn: Txn,
    engine: Engine,
    line_ref: str,
    plan_name: str,
    *,
    now: int,
    actor: str,
    reason: str,
    idempotency_key: str | None = None,
) -> OpResult:
    """End extra plan `plan_name` of a line now: its buckets expire, no fee is refunded."""

    def run() -> OpResult:
        sub = get_line(txn, line_ref)
        ctx = engine.context(txn, sub, now)
        if plan_name not in extra_plans(ctx.line_bs):
            raise NotFound("plan", f"line #{sub.id} has no extra plan {plan_name!r}")
        remove_extra(ctx, plan_name, actor=actor, reason=reason)
        ctx.flush()
        return OpResult(_view(sub.id, extra_plans(ctx.line_bs), sub.plan), _signals(txn, [sub.id], "reauth"))

    return idempotent(txn, idempotency_key, now, engine.config.idempotency_window, run)
