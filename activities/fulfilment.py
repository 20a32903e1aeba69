"""Order and provisioning: the order record and the customer's entitlements."""

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio import activity

from activities.quotes import quote_id_for
from l2c import pricing
from models.documents import (
    EntitlementChange,
    InvoiceLinePlan,
    OrderProvisioned,
    OrderRequest,
    QuantityChanged,
    QuantityChangeRequest,
)
from models.ledger import Entitlement, OrderRecord


class FulfilmentActivities:
    def __init__(self, engine: Engine):
        self._engine = engine

    @activity.defn
    def provision_order(self, request: OrderRequest) -> OrderProvisioned:
        order_id = f"{request.deal_id}-O1"
        entitlements = {line.sku: line.quantity for line in request.quote.lines}
        with Session(self._engine) as session:
            if session.get(OrderRecord, order_id) is None:
                session.add(
                    OrderRecord(
                        order_id=order_id,
                        deal_id=request.deal_id,
                        quote_id=quote_id_for(request.deal_id, request.quote.version),
                        created_at=request.requested_at,
                    )
                )
                session.flush()
                for sku, quantity in entitlements.items():
                    session.add(Entitlement(order_id=order_id, sku=sku, quantity=quantity))
                session.commit()
        return OrderProvisioned(order_id=order_id, entitlements=entitlements)

    @activity.defn
    def renew_entitlements(self, request: OrderRequest) -> OrderProvisioned:
        """The order's entitlements become the renewal quote's: quantities set, products it
        adds entitled, products it drops no longer active (setting state: a retry is harmless)."""
        order_id = f"{request.deal_id}-O1"
        entitlements = {line.sku: line.quantity for line in request.quote.lines}
        with Session(self._engine) as session:
            rows = {e.sku: e for e in session.exec(
                select(Entitlement).where(Entitlement.order_id == order_id)).all()}  # fmt: skip
            for sku, row in rows.items():
                row.active = sku in entitlements
                row.quantity = entitlements.get(sku, row.quantity)
                session.add(row)
            for sku, quantity in entitlements.items():
                if sku not in rows:
                    session.add(Entitlement(order_id=order_id, sku=sku, quantity=quantity))
            session.commit()
        return OrderProvisioned(order_id=order_id, entitlements=entitlements)

    @activity.defn
    def set_entitlements_active(self, change: EntitlementChange) -> None:
        """Suspend or restore the order's entitlements (setting a state, so a retry is harmless);
        the order's status says why."""
        with Session(self._engine) as session:
            order = session.get(OrderRecord, change.order_id, with_for_update=True)
            if order is None or order.deal_id != change.deal_id:
                raise ValueError(f"order {change.order_id} is not deal {change.deal_id}'s")
            order.status = "provisioned" if change.active else "suspended"
            session.add(order)
            for entitlement in session.exec(
                select(Entitlement).where(Entitlement.order_id == change.order_id)
            ).all():
                entitlement.active = change.active
                session.add(entitlement)
            session.commit()

    @activity.defn
    def change_quantity(self, change: QuantityChangeRequest) -> QuantityChanged:
        """A recurring line's quantity changes now: the entitlement follows, the plan is re-priced
        at the locked prices, and the rest of the period under way is prorated."""
        plan = pricing.change_quantity(change.quote, change.sku, change.quantity)
        amount = pricing.proration(change.quote, plan, change.sku, change.period_months,
                                   change.remaining)  # fmt: skip
        before = next(line.quantity for line in change.quote.lines if line.sku == change.sku)
        with Session(self._engine) as session:
            entitlement = session.get(Entitlement, (change.order_id, change.sku))
            if entitlement is not None:
                entitlement.quantity = change.quantity
                session.add(entitlement)
                session.commit()
        line = None
        if amount > 0:
            name = next(line.name for line in plan.lines if line.sku == change.sku)
            line = InvoiceLinePlan(
                sku=change.sku,
                description=f"{name}: {before} -> {change.quantity} on "
                f"{change.changed_at.date().isoformat()}, prorated for the rest of the period",
                quantity=1,
                unit_price=amount,
                amount=amount,
            )
        recognition = pricing.spread(amount, change.months_left)
        return QuantityChanged(quote=plan, proration=amount, line=line, recognition=recognition)
