"""The console's words, in Chinese (the default: finance staff read Chinese) and English (a switch, kept in
a cookie or given as ``?lang=``). Every visible string goes through this catalog; a test checks that both
languages have every key the templates and the code use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LANGS = ("zh", "en")
DEFAULT_LANG = "zh"
COOKIE = "hb_lang"

Translate = Callable[..., str]

MESSAGES: dict[str, tuple[str, str]] = {
    "app.title": ("对账与财务控制台", "Reconciliation & finance console"),
    "app.lang_switch": ("English", "中文"),
    "nav.summary": ("当日概览", "Day at a glance"),
    "nav.exceptions": ("异常账", "Exceptions"),
    "nav.logout": ("退出", "Log out"),
    "nav.signed_in_as": ("当前用户", "Signed in as"),
    "login.title": ("登录", "Sign in"),
    "login.username": ("用户名", "User name"),
    "login.password": ("密码", "Password"),
    "login.submit": ("登录", "Sign in"),
    "login.failed": ("用户名或密码错误", "Wrong user name or password"),
    "login.throttled": ("登录失败次数过多，请稍后再试", "Too many failed sign-ins; try again later"),
    "login.expired": ("会话已过期，请重新登录", "Your session has ended; sign in again"),
    "role.viewer": ("查看", "viewer"),
    "role.clerk": ("经办", "clerk"),
    "role.approver": ("审批", "approver"),
    "role.admin": ("管理员", "administrator"),
    "field.day": ("对账日", "Day"),
    "field.hospital": ("医院", "Hospital"),
    "field.channel": ("渠道", "Channel"),
    "field.class": ("类别", "Class"),
    "field.status": ("状态", "Status"),
    "field.search": ("交易号", "Trade no."),
    "field.all": ("全部", "All"),
    "field.amount": ("金额（元）", "Amount (yuan)"),
    "field.reason": ("原因", "Reason"),
    "field.note": ("说明", "Note"),
    "field.reference": ("凭证号", "Reference"),
    "field.detail": ("差异说明", "Difference"),
    "field.entry": ("业务", "Entry"),
    "field.out_trade_no": ("平台交易号", "Platform trade no."),
    "field.out_refund_no": ("平台退款号", "Platform refund no."),
    "field.channel_trade_no": ("渠道交易号", "Channel trade no."),
    "field.his_receipt_no": ("HIS 收据号", "HIS receipt no."),
    "field.his_fen": ("HIS 金额", "HIS amount"),
    "field.platform_fen": ("平台金额", "Platform amount"),
    "field.channel_fen": ("渠道金额", "Channel amount"),
    "field.handled_by": ("处理人", "Handled by"),
    "field.handled_at": ("处理时间", "Handled at"),
    "field.updated_at": ("更新时间", "Updated"),
    "field.id": ("编号", "No."),
    "action.filter": ("筛选", "Filter"),
    "action.reset": ("清除", "Clear"),
    "action.export_csv": ("导出 CSV", "Export CSV"),
    "action.export_xlsx": ("导出 Excel", "Export XLSX"),
    "action.view": ("查看", "Open"),
    "action.propose_refund": ("申请原路退款", "Propose refund to the original route"),
    "action.approve": ("批准退款", "Approve refund"),
    "action.reject": ("驳回", "Reject"),
    "action.mark_handled": ("标记为已处理", "Mark handled"),
    "action.attach_reference": ("添加凭证号", "Attach reference"),
    "action.back": ("返回列表", "Back to the list"),
    "summary.title": ("当日概览", "The day at a glance"),
    "summary.per_channel": ("分医院、分渠道", "Per hospital and channel"),
    "summary.his": ("HIS", "HIS"),
    "summary.platform": ("平台", "Platform"),
    "summary.channel": ("渠道对账单", "Channel statement"),
    "summary.count": ("笔数", "Count"),
    "summary.total": ("金额", "Amount"),
    "summary.fee": ("手续费", "Fees"),
    "summary.matched": ("已平", "Matched"),
    "summary.exceptions": ("异常", "Exceptions"),
    "summary.open_exceptions": ("待处理异常", "Open exceptions"),
    "summary.no_run": ("该日尚未对账", "This day has not been reconciled yet"),
    "summary.run_status": ("对账状态", "Run"),
    "summary.chart_title": ("近 30 日收款与异常", "Collected and exceptions, last 30 days"),
    "summary.chart_amount": ("收款", "collected"),
    "summary.chart_exceptions": ("异常笔数", "exceptions"),
    "summary.chart_legend": (
        "柱：渠道收款（元）；红点：当日异常笔数",
        "Bars: collected at the channels (yuan); red dots: the day's exceptions",
    ),
    "exceptions.title": ("异常账", "Exceptions"),
    "exceptions.none": ("没有符合条件的异常", "No exceptions match"),
    "exceptions.count": ("共 {n} 条", "{n} in all"),
    "exception.title": ("异常 #{id}", "Exception #{id}"),
    "exception.records": ("三方记录", "The three records"),
    "exception.his": ("HIS 记录", "HIS record"),
    "exception.platform": ("平台记录", "Platform record"),
    "exception.channel": ("渠道对账单记录", "Channel statement record"),
    "exception.missing": ("无记录", "No record"),
    "exception.actions": ("处理", "Actions"),
    "exception.history": ("操作记录", "History"),
    "exception.proposals": ("退款申请", "Refund proposals"),
    "exception.refundable": ("可退金额：¥{amount}", "Refundable: ¥{amount}"),
    "exception.no_actions": ("您的角色不能处理此异常", "Your role cannot act on this exception"),
    "exception.nothing_to_do": ("此异常无需进一步处理", "Nothing more to do for this exception"),
    "exception.own_proposal": (
        "这是您本人提出的申请，需由另一位审批人批准",
        "You proposed this refund: another approver must approve it",
    ),
    "proposal.by": ("{who} 于 {at} 申请退款 ¥{amount}", "{who} proposed a refund of ¥{amount} at {at}"),
    "proposal.decided": ("{who} 于 {at} {what}", "{who} {what} at {at}"),
    "proposal.state.proposed": ("待审批", "awaiting approval"),
    "proposal.state.approved": ("已批准，退款中", "approved, refund under way"),
    "proposal.state.rejected": ("已驳回", "rejected"),
    "proposal.state.done": ("已退回", "refunded"),
    "proposal.state.failed": ("退款失败", "refund failed"),
    "history.at": ("时间", "When"),
    "history.actor": ("操作人", "Who"),
    "history.action": ("操作", "What"),
    "history.change": ("变更", "Change"),
    "class.over_collection": ("长款", "Over-collection"),
    "class.under_collection": ("短款", "Under-collection"),
    "class.amount_mismatch": ("金额不符", "Amount mismatch"),
    "class.status_mismatch": ("状态不符", "Status mismatch"),
    "class.duplicate": ("重复支付", "Duplicate"),
    "class.cross_day": ("跨日", "Cross-day"),
    "status.open": ("待处理", "Open"),
    "status.proposed": ("待审批", "Awaiting approval"),
    "status.approved": ("退款中", "Refunding"),
    "status.handled": ("已处理", "Handled"),
    "status.closed": ("已关闭", "Closed"),
    "entry.pay": ("收款", "Payment"),
    "entry.refund": ("退款", "Refund"),
    "channel.wechat": ("微信支付", "WeChat Pay"),
    "channel.alipay": ("支付宝", "Alipay"),
    "channel.unionpay": ("银联", "UnionPay"),
    "flash.proposed": ("退款申请已提交，等待审批", "Refund proposed; it awaits approval"),
    "flash.approved": ("已批准，款项正原路退回", "Approved; the money is going back by the original route"),
    "flash.refunded": ("已批准，款项已原路退回", "Approved; the money went back by the original route"),
    "flash.rejected": ("已驳回退款申请", "Refund proposal rejected"),
    "flash.handled": ("已标记为已处理", "Marked handled"),
    "flash.reference": ("凭证号已保存", "Reference saved"),
    "error.title": ("出错了", "Something went wrong"),
    "error.forbidden": ("您的角色无权执行此操作", "Your role may not do this"),
    "error.not_found": ("找不到该页面或记录", "No such page or record"),
    "error.csrf": ("页面已过期，请刷新后重试", "This page is stale; reload it and try again"),
    "error.same_person": (
        "审批人不能是申请人本人（职责分离）",
        "The approver must be someone other than the proposer (separation of duties)",
    ),
    "error.not_refundable": ("此异常不能原路退款", "This exception cannot be refunded to the original route"),
    "error.amount": (
        "金额须大于 0 且不超过可退金额 ¥{amount}",
        "The amount must be above 0 and at most the refundable ¥{amount}",
    ),
    "error.bad_amount": ("请输入金额，如 12.50", "Enter an amount such as 12.50"),
    "error.state": (
        "该异常状态已变化（{now}），请刷新后再试",
        "This exception has changed ({now}); reload and try again",
    ),
    "error.no_proposal": ("没有待审批的退款申请", "No refund proposal awaits approval"),
    "error.note_required": ("请填写处理说明", "Write a note saying how it was handled"),
    "error.reference_required": ("请填写凭证号", "Enter a reference"),
    "error.reason_required": ("请填写退款原因", "Enter a reason for the refund"),
    "error.not_under_collection": ("只有短款可以标记为已处理", "Only an under-collection is marked handled"),
    "error.refund_failed": ("渠道退款失败：{why}", "The channel refused the refund: {why}"),
    "error.internal": ("服务器内部错误，请联系管理员", "Internal error; tell the administrator"),
    "export.sheet": ("异常账", "Exceptions"),
}


def translator(lang: str) -> Translate:
    index = LANGS.index(lang) if lang in LANGS else 0

    def t(key: str, **params: Any) -> str:
        text = MESSAGES[key][index] if key in MESSAGES else key
        return text.format(**params) if params else text

    return t


def pick(query: str | None, cookie: str | None) -> str:
    for candidate in (query, cookie):
        if candidate in LANGS:
            return candidate
    return DEFAULT_LANG
