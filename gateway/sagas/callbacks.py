"""Processing a stored channel callback: the channel's word about a payment or a refund, applied once."""

from __future__ import annotations

from typing import Any

from gateway.channels.base import Notification
from gateway.sagas import payment, refund
from gateway.services import Services, log
from gateway.store import events, registry
from gateway.store import orders as order_store


async def process(svc: Services, event: Any) -> str:
    """Apply one inbox event; returns the outcome recorded with it."""
    notification: Notification = events.decode(event.payload)
    merchant = event.merchant_id
    if notification.kind == "payment" and notification.trade is not None:
        trade = notification.trade
        order = await order_store.by_out_trade_no(svc.db, trade.out_trade_no)
        if order is None:
            return f"unknown trade {trade.out_trade_no}"
        if order.merchant_id != merchant:
            log.warning("callback_wrong_merchant", out_trade_no=trade.out_trade_no, merchant=merchant)
            return f"trade {trade.out_trade_no} belongs to merchant {order.merchant_id}, not {merchant}"
        if trade.state in payment.SUCCESS_STATES and trade.amount_fen is None:
            log.warning("callback_without_amount", out_trade_no=trade.out_trade_no, merchant=merchant)
            await payment.apply_trade_status(svc, order, trade, source="callback")
            return f"refused: success for {trade.out_trade_no} names no amount; the channel is asked instead"
        order = await payment.apply_trade_status(svc, order, trade, source="callback")
        return f"order {order.out_trade_no} {order.status}"
    if notification.kind == "refund" and notification.refund is not None:
        channel = await registry.merchant_channel(svc.db, merchant)
        return await refund.on_channel_refund(svc, notification.refund, channel or "", merchant, source="callback")
    return f"ignored {notification.kind} notification"
