-- The sandbox HIS's rules in PL/pgSQL, one function per business action, mirroring sandbox/his/state.py.
-- A business refusal raises SQLSTATE 'H' || code (H1001 patient not found, H2002 bill already paid, ...);
-- the callable procedures in 03_procedures.sql turn it into a status row, and the exception handler's
-- subtransaction guarantees that a refused call changes nothing. Amounts here are BIGINT fen.

CREATE FUNCTION his_now() RETURNS TIMESTAMP(0) LANGUAGE sql STABLE AS $$
    SELECT date_trunc('second', now() AT TIME ZONE 'Asia/Shanghai')::TIMESTAMP(0)
$$;

CREATE FUNCTION his_fail(p_code TEXT, p_message TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'H' || p_code, MESSAGE = p_message;
END $$;

CREATE FUNCTION his_applied(p_operation TEXT, p_trade_no TEXT, p_refund_no TEXT DEFAULT NULL) RETURNS VOID
LANGUAGE sql AS $$
    INSERT INTO applications (operation, trade_no, refund_no, applied_at) VALUES (p_operation, p_trade_no, p_refund_no, his_now())
$$;

-- Takes the first fault rule for p_operation; returns the error code of an 'error' rule, else NULL.
CREATE FUNCTION his_fault(p_operation TEXT) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE f his_faults;
BEGIN
    SELECT * INTO f FROM his_faults WHERE operation IN (p_operation, '*') ORDER BY id LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF f.remaining IS NOT NULL AND f.remaining <= 1 THEN
        DELETE FROM his_faults WHERE id = f.id;
    ELSE
        UPDATE his_faults SET remaining = remaining - 1, hits = hits + 1 WHERE id = f.id;
    END IF;
    IF f.sleep_ms > 0 THEN
        PERFORM pg_sleep(f.sleep_ms / 1000.0);
    END IF;
    IF f.mode = 'deadlock' THEN
        RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'could not serialize access (injected deadlock)';
    END IF;
    IF f.mode = 'error' THEN
        RETURN f.error_code;
    END IF;
    RETURN NULL;
END $$;

-- Yuan (NUMERIC) to fen, refusing sub-fen amounts instead of rounding them.
CREATE FUNCTION his_fen(p_yuan NUMERIC, p_field TEXT DEFAULT 'Amount') RETURNS BIGINT LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_yuan IS NULL THEN
        PERFORM his_fail('9001', format('缺少必填项 (%s is required)', p_field));
    END IF;
    IF p_yuan < 0 OR p_yuan <> round(p_yuan, 2) OR p_yuan >= 10000000000 THEN
        PERFORM his_fail('9001', format('金额格式错误 (%s must be yuan with at most two decimals, got %s)', p_field, p_yuan));
    END IF;
    RETURN (p_yuan * 100)::BIGINT;
END $$;

CREATE FUNCTION his_yuan(p_fen BIGINT) RETURNS NUMERIC(12, 2) LANGUAGE sql IMMUTABLE AS $$
    SELECT (p_fen::NUMERIC / 100)::NUMERIC(12, 2)
$$;

CREATE FUNCTION his_time_text(p_time TIMESTAMP) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(p_time, 'YYYY-MM-DD HH24:MI:SS')
$$;

CREATE FUNCTION his_require(p_value TEXT, p_field TEXT) RETURNS TEXT LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NULL OR btrim(p_value) = '' THEN
        PERFORM his_fail('9001', format('缺少必填项 (%s is required)', p_field));
    END IF;
    RETURN p_value;
END $$;

CREATE FUNCTION his_patient(p_patient_id TEXT) RETURNS patients LANGUAGE plpgsql AS $$
DECLARE p patients;
BEGIN
    SELECT * INTO p FROM patients WHERE patient_id = p_patient_id;
    IF NOT FOUND THEN
        PERFORM his_fail('1001', format('患者不存在 (patient %s not found)', p_patient_id));
    END IF;
    RETURN p;
END $$;

CREATE FUNCTION his_check_paid(p_amount_fen BIGINT, p_pay_mode TEXT, p_channel_trade_no TEXT, p_pay_time TIMESTAMP)
RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    IF p_amount_fen IS NULL OR p_amount_fen <= 0 OR p_amount_fen > 10000000000 THEN
        PERFORM his_fail('9001', format('金额无效 (amount must be positive, got %s fen)', p_amount_fen));
    END IF;
    IF p_pay_mode IS NULL OR p_pay_mode NOT IN ('WX', 'ZFB', 'YL') THEN
        PERFORM his_fail('9001', format('支付方式无效 (PayMode must be one of WX, ZFB, YL, got %L)', p_pay_mode));
    END IF;
    IF p_channel_trade_no IS NULL OR p_channel_trade_no = '' THEN
        PERFORM his_fail('9001', '缺少渠道交易号 (ChannelTradeNo is required)');
    END IF;
    IF p_pay_time IS NULL THEN
        PERFORM his_fail('9001', '缺少必填项 (PayTime is required)');
    END IF;
END $$;

CREATE FUNCTION his_insert_trade(
    p_kind TEXT, p_prefix TEXT, p_trade_no TEXT, p_patient_id TEXT, p_amount_fen BIGINT, p_pay_mode TEXT,
    p_channel_trade_no TEXT, p_pay_time TIMESTAMP, OUT trade_id BIGINT, OUT receipt_no TEXT
) LANGUAGE plpgsql AS $$
DECLARE v_now TIMESTAMP(0) := his_now();
BEGIN
    INSERT INTO trades (trade_no, kind, patient_id, amount_fen, pay_mode, channel_trade_no, pay_time, recorded_at)
    VALUES (p_trade_no, p_kind, p_patient_id, p_amount_fen, p_pay_mode, p_channel_trade_no, p_pay_time, v_now)
    RETURNING id INTO trade_id;
    receipt_no := p_prefix || to_char(v_now, 'YYYYMMDD') || lpad(trade_id::TEXT, 6, '0');
    UPDATE trades SET receipt_no = his_insert_trade.receipt_no WHERE id = trade_id;
END $$;

-- --- reads ---------------------------------------------------------------------------------------------------

CREATE FUNCTION his_core_query_patient(p_card_no TEXT, p_id_card_no TEXT, p_phone TEXT) RETURNS patients
LANGUAGE plpgsql AS $$
DECLARE p patients;
BEGIN
    IF coalesce(p_card_no, '') <> '' THEN
        SELECT * INTO p FROM patients WHERE card_no = p_card_no ORDER BY patient_id LIMIT 1;
    ELSIF coalesce(p_id_card_no, '') <> '' THEN
        SELECT * INTO p FROM patients WHERE id_card_no = p_id_card_no ORDER BY patient_id LIMIT 1;
    ELSIF coalesce(p_phone, '') <> '' THEN
        SELECT * INTO p FROM patients WHERE phone = p_phone ORDER BY patient_id LIMIT 1;
    ELSE
        PERFORM his_fail('9001', '请提供卡号、身份证号或手机号之一 (give CardNo, IdCardNo or Phone)');
    END IF;
    IF NOT FOUND THEN
        PERFORM his_fail('1001', '患者不存在 (patient not found)');
    END IF;
    RETURN p;
END $$;

CREATE FUNCTION his_core_unpaid_bills(p_patient_id TEXT) RETURNS SETOF bills LANGUAGE plpgsql AS $$
BEGIN
    PERFORM his_patient(p_patient_id);
    RETURN QUERY SELECT * FROM bills WHERE patient_id = p_patient_id AND status = 'unpaid' ORDER BY bill_no;
END $$;

-- --- registration ------------------------------------------------------------------------------------------

CREATE FUNCTION his_free_slots(s schedules, p_now TIMESTAMP) RETURNS INTEGER LANGUAGE sql AS $$
    SELECT s.capacity - s.booked - (SELECT count(*)::INTEGER FROM locks
        WHERE schedule_id = s.schedule_id AND status = 'locked' AND expires_at > p_now)
$$;

CREATE FUNCTION his_schedule(p_schedule_id TEXT) RETURNS schedules LANGUAGE plpgsql AS $$
DECLARE s schedules;
BEGIN
    SELECT * INTO s FROM schedules WHERE schedule_id = p_schedule_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM his_fail('1002', format('排班不存在 (schedule %s unknown)', p_schedule_id));
    END IF;
    RETURN s;
END $$;

CREATE FUNCTION his_core_lock(
    p_trade_no TEXT, p_patient_id TEXT, p_schedule_id TEXT,
    OUT lock_id TEXT, OUT amount_fen BIGINT, OUT expire_time TIMESTAMP(0)
) LANGUAGE plpgsql AS $$
DECLARE s schedules; v_now TIMESTAMP(0) := his_now(); v_id BIGINT;
BEGIN
    PERFORM his_require(p_trade_no, 'TradeNo');
    PERFORM his_patient(p_patient_id);
    s := his_schedule(p_schedule_id);
    IF his_free_slots(s, v_now) <= 0 THEN
        PERFORM his_fail('1002', format('号源已满 (schedule %s is full)', p_schedule_id));
    END IF;
    expire_time := v_now + INTERVAL '15 minutes';
    INSERT INTO locks (trade_no, patient_id, schedule_id, amount_fen, status, created_at, expires_at)
    VALUES (p_trade_no, p_patient_id, p_schedule_id, s.fee_fen, 'locked', v_now, expire_time) RETURNING id INTO v_id;
    lock_id := 'LK' || lpad(v_id::TEXT, 8, '0');
    UPDATE locks SET lock_id = his_core_lock.lock_id WHERE id = v_id;
    amount_fen := s.fee_fen;
    PERFORM his_applied('LockRegistration', p_trade_no);
END $$;

CREATE FUNCTION his_core_unlock(p_trade_no TEXT, p_lock_id TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE l locks;
BEGIN
    SELECT * INTO l FROM locks WHERE lock_id = p_lock_id FOR UPDATE;
    IF NOT FOUND OR l.trade_no <> p_trade_no THEN
        PERFORM his_fail('1003', format('锁号不存在 (lock %s unknown for trade %s)', p_lock_id, p_trade_no));
    END IF;
    IF l.status = 'used' THEN
        PERFORM his_fail('1003', format('已挂号，不能解锁 (lock %s already used by a registration)', p_lock_id));
    END IF;
    UPDATE locks SET status = 'unlocked' WHERE lock_id = p_lock_id;
    PERFORM his_applied('UnlockRegistration', p_trade_no);
END $$;

CREATE FUNCTION his_core_commit_registration(
    p_trade_no TEXT, p_patient_id TEXT, p_schedule_id TEXT, p_lock_id TEXT, p_amount_fen BIGINT, p_pay_mode TEXT,
    p_channel_trade_no TEXT, p_pay_time TIMESTAMP, OUT receipt_no TEXT, OUT visit_no TEXT
) LANGUAGE plpgsql AS $$
DECLARE s schedules; l locks; v_now TIMESTAMP(0) := his_now(); t record;
BEGIN
    PERFORM his_check_paid(p_amount_fen, p_pay_mode, p_channel_trade_no, p_pay_time);
    PERFORM his_require(p_trade_no, 'TradeNo');
    PERFORM his_patient(p_patient_id);
    s := his_schedule(p_schedule_id);
    IF coalesce(p_lock_id, '') <> '' THEN
        SELECT * INTO l FROM locks WHERE lock_id = p_lock_id FOR UPDATE;
        IF NOT FOUND OR l.patient_id <> p_patient_id OR l.schedule_id <> p_schedule_id
           OR (l.status = 'used' AND l.trade_no <> p_trade_no) THEN
            PERFORM his_fail('1003', format('锁号不存在 (lock %s unknown)', p_lock_id));
        END IF;
        IF l.status = 'unlocked' OR (l.status = 'locked' AND l.expires_at <= v_now) THEN
            PERFORM his_fail('1003', format('锁号已失效 (lock %s expired or released)', p_lock_id));
        END IF;
    ELSIF his_free_slots(s, v_now) <= 0 THEN
        PERFORM his_fail('1002', format('号源已满 (schedule %s is full)', p_schedule_id));
    END IF;
    IF p_amount_fen <> s.fee_fen THEN
        PERFORM his_fail('2003', format('金额不符 (amount %s fen does not match the fee %s fen)', p_amount_fen, s.fee_fen));
    END IF;
    IF coalesce(p_lock_id, '') <> '' THEN
        UPDATE locks SET status = 'used' WHERE lock_id = p_lock_id;
    END IF;
    UPDATE schedules SET booked = booked + 1 WHERE schedule_id = p_schedule_id;
    t := his_insert_trade('registration', 'GH', p_trade_no, p_patient_id, p_amount_fen, p_pay_mode,
                          p_channel_trade_no, p_pay_time);
    visit_no := 'MZ' || lpad(t.trade_id::TEXT, 8, '0');
    UPDATE trades SET schedule_id = p_schedule_id, lock_id = NULLIF(p_lock_id, ''), visit_no = his_core_commit_registration.visit_no
    WHERE id = t.trade_id;
    receipt_no := t.receipt_no;
    PERFORM his_applied('CommitRegistration', p_trade_no);
END $$;

-- --- charge and prepay -------------------------------------------------------------------------------------

CREATE FUNCTION his_check_bill(p_patient_id TEXT, p_bill_no TEXT) RETURNS bills LANGUAGE plpgsql AS $$
DECLARE b bills;
BEGIN
    SELECT * INTO b FROM bills WHERE bill_no = p_bill_no FOR UPDATE;
    IF NOT FOUND OR b.patient_id <> p_patient_id THEN
        PERFORM his_fail('2001', format('缴费单不存在 (bill %s unknown for patient %s)', p_bill_no, p_patient_id));
    END IF;
    IF b.status = 'paid' THEN
        PERFORM his_fail('2002', format('缴费单已缴费 (bill %s already paid)', p_bill_no));
    END IF;
    RETURN b;
END $$;

CREATE FUNCTION his_core_commit_charge(
    p_trade_no TEXT, p_patient_id TEXT, p_bill_nos TEXT[], p_amount_fen BIGINT, p_pay_mode TEXT,
    p_channel_trade_no TEXT, p_pay_time TIMESTAMP
) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE v_total BIGINT := 0; v_bill TEXT; t record;
BEGIN
    PERFORM his_check_paid(p_amount_fen, p_pay_mode, p_channel_trade_no, p_pay_time);
    PERFORM his_require(p_trade_no, 'TradeNo');
    IF coalesce(cardinality(p_bill_nos), 0) = 0
       OR (SELECT count(DISTINCT b) FROM unnest(p_bill_nos) b) <> cardinality(p_bill_nos) THEN
        PERFORM his_fail('9001', '缴费单号为空或重复 (BillNos must be non-empty and distinct)');
    END IF;
    PERFORM his_patient(p_patient_id);
    FOREACH v_bill IN ARRAY p_bill_nos LOOP
        v_total := v_total + (his_check_bill(p_patient_id, v_bill)).amount_fen;
    END LOOP;
    IF p_amount_fen <> v_total THEN
        PERFORM his_fail('2003', format('金额不符 (amount %s fen, bills total %s fen)', p_amount_fen, v_total));
    END IF;
    t := his_insert_trade('charge', 'SF', p_trade_no, p_patient_id, p_amount_fen, p_pay_mode, p_channel_trade_no, p_pay_time);
    UPDATE trades SET bill_nos = array_to_string(p_bill_nos, ',') WHERE id = t.trade_id;
    UPDATE bills SET status = 'paid', trade_id = t.trade_id WHERE bill_no = ANY (p_bill_nos);
    PERFORM his_applied('CommitCharge', p_trade_no);
    RETURN t.receipt_no;
END $$;

CREATE FUNCTION his_core_commit_prepay(
    p_trade_no TEXT, p_patient_id TEXT, p_inpatient_no TEXT, p_amount_fen BIGINT, p_pay_mode TEXT,
    p_channel_trade_no TEXT, p_pay_time TIMESTAMP, OUT receipt_no TEXT, OUT balance_fen BIGINT
) LANGUAGE plpgsql AS $$
DECLARE i inpatients; t record;
BEGIN
    PERFORM his_check_paid(p_amount_fen, p_pay_mode, p_channel_trade_no, p_pay_time);
    PERFORM his_require(p_trade_no, 'TradeNo');
    PERFORM his_patient(p_patient_id);
    SELECT * INTO i FROM inpatients WHERE inpatient_no = p_inpatient_no FOR UPDATE;
    IF NOT FOUND OR i.patient_id <> p_patient_id THEN
        PERFORM his_fail('1001', format('住院记录不存在 (inpatient %s unknown for patient %s)', p_inpatient_no, p_patient_id));
    END IF;
    UPDATE inpatients SET balance_fen = inpatients.balance_fen + p_amount_fen WHERE inpatient_no = p_inpatient_no;
    t := his_insert_trade('prepay', 'YJ', p_trade_no, p_patient_id, p_amount_fen, p_pay_mode, p_channel_trade_no, p_pay_time);
    UPDATE trades SET inpatient_no = p_inpatient_no WHERE id = t.trade_id;
    receipt_no := t.receipt_no;
    balance_fen := i.balance_fen + p_amount_fen;
    PERFORM his_applied('CommitPrepay', p_trade_no);
END $$;

-- --- refunds -----------------------------------------------------------------------------------------------
-- A refund application takes back the deposit balance at once, and, once the trade's live applications cover
-- all of it, the registration slot (退号) or the paid bills (退费); a cancelled application gives all of it back.

CREATE FUNCTION his_live_refunds_fen(p_trade_no TEXT) RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(amount_fen), 0)::BIGINT FROM refunds WHERE trade_no = p_trade_no AND cancelled_at IS NULL
$$;

-- Releases the slot or the bills when the trade becomes fully refunded, takes them back when it stops being so;
-- a slot given away meanwhile cannot be taken back (1002).
CREATE FUNCTION his_refund_total_changed(t trades, p_before_fen BIGINT, p_after_fen BIGINT) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE v_full_before BOOLEAN := p_before_fen >= t.amount_fen; v_full_after BOOLEAN := p_after_fen >= t.amount_fen;
    s schedules;
BEGIN
    IF v_full_before = v_full_after THEN
        RETURN;
    END IF;
    IF t.kind = 'registration' THEN
        s := his_schedule(t.schedule_id);
        IF v_full_after THEN
            UPDATE schedules SET booked = booked - 1 WHERE schedule_id = t.schedule_id;
        ELSIF his_free_slots(s, his_now()) <= 0 THEN
            PERFORM his_fail('1002', format('号源已满，无法恢复挂号 (schedule %s is full: the registration %s cannot be restored)',
                t.schedule_id, t.receipt_no));
        ELSE
            UPDATE schedules SET booked = booked + 1 WHERE schedule_id = t.schedule_id;
        END IF;
    ELSIF t.kind = 'charge' THEN
        UPDATE bills SET status = CASE WHEN v_full_after THEN 'refunded' ELSE 'paid' END WHERE trade_id = t.id;
    END IF;
END $$;

CREATE FUNCTION his_core_apply_refund(
    p_trade_no TEXT, p_refund_no TEXT, p_amount_fen BIGINT, p_reason TEXT,
    OUT refundable_fen BIGINT, OUT his_refund_id TEXT
) LANGUAGE plpgsql AS $$
DECLARE r refunds; t trades; v_balance BIGINT; v_id BIGINT; v_live BIGINT;
BEGIN
    IF p_amount_fen IS NULL OR p_amount_fen <= 0 OR p_amount_fen > 10000000000 THEN
        PERFORM his_fail('9001', format('金额无效 (refund amount must be positive fen, got %s)', p_amount_fen));
    END IF;
    PERFORM his_require(p_refund_no, 'RefundNo');
    PERFORM his_require(p_trade_no, 'TradeNo');
    SELECT * INTO r FROM refunds WHERE refund_no = p_refund_no;
    IF FOUND THEN
        IF r.trade_no <> p_trade_no THEN
            PERFORM his_fail('9001', format('退款单号已用于其他交易 (refund %s belongs to another trade)', p_refund_no));
        END IF;
        IF r.cancel_receipt_no IS NOT NULL THEN
            PERFORM his_fail('3005', format('退款申请已撤销 (refund %s was cancelled at %s; a new refund needs a new refund number)',
                p_refund_no, his_time_text(r.cancelled_at)));
        END IF;
        PERFORM his_applied('ApplyRefund', p_trade_no, p_refund_no);
        refundable_fen := r.refundable_fen;
        his_refund_id := r.his_refund_id;
        RETURN;
    END IF;
    SELECT * INTO t FROM trades WHERE trade_no = p_trade_no ORDER BY id LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM his_fail('3001', format('交易不存在 (trade %s unknown)', p_trade_no));
    END IF;
    v_live := his_live_refunds_fen(p_trade_no);
    refundable_fen := t.amount_fen - v_live;
    IF t.kind = 'prepay' THEN
        SELECT balance_fen INTO v_balance FROM inpatients WHERE inpatient_no = t.inpatient_no FOR UPDATE;
        refundable_fen := least(refundable_fen, v_balance);
    END IF;
    IF p_amount_fen > refundable_fen THEN
        PERFORM his_fail('3002', format('超出可退金额 (refund %s fen exceeds refundable %s fen)', p_amount_fen, refundable_fen));
    END IF;
    IF t.kind = 'prepay' THEN
        UPDATE inpatients SET balance_fen = balance_fen - p_amount_fen WHERE inpatient_no = t.inpatient_no;
    END IF;
    PERFORM his_refund_total_changed(t, v_live, v_live + p_amount_fen);
    INSERT INTO refunds (refund_no, trade_no, trade_id, amount_fen, refundable_fen, reason, applied_at)
    VALUES (p_refund_no, p_trade_no, t.id, p_amount_fen, refundable_fen, p_reason, his_now()) RETURNING id INTO v_id;
    his_refund_id := 'HR' || lpad(v_id::TEXT, 8, '0');
    UPDATE refunds SET his_refund_id = his_core_apply_refund.his_refund_id WHERE id = v_id;
    PERFORM his_applied('ApplyRefund', p_trade_no, p_refund_no);
END $$;

CREATE FUNCTION his_refund_of(p_trade_no TEXT, p_refund_no TEXT) RETURNS refunds LANGUAGE plpgsql AS $$
DECLARE r refunds;
BEGIN
    SELECT * INTO r FROM refunds WHERE refund_no = p_refund_no FOR UPDATE;
    IF NOT FOUND OR r.trade_no <> p_trade_no THEN
        PERFORM his_fail('3003', format('退款申请不存在 (refund %s unknown for trade %s)', p_refund_no, p_trade_no));
    END IF;
    RETURN r;
END $$;

CREATE FUNCTION his_core_writeback_refund(
    p_trade_no TEXT, p_refund_no TEXT, p_amount_fen BIGINT, p_channel_refund_no TEXT, p_refund_time TIMESTAMP
) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE r refunds; v_now TIMESTAMP(0) := his_now(); v_receipt TEXT;
BEGIN
    IF coalesce(p_channel_refund_no, '') = '' THEN
        PERFORM his_fail('9001', '缺少渠道退款单号 (ChannelRefundNo is required)');
    END IF;
    IF p_refund_time IS NULL THEN
        PERFORM his_fail('9001', '缺少必填项 (RefundTime is required)');
    END IF;
    r := his_refund_of(p_trade_no, p_refund_no);
    IF r.cancel_receipt_no IS NOT NULL THEN
        PERFORM his_fail('3005', format('退款申请已撤销 (refund %s was cancelled at %s; it cannot be written back)',
            p_refund_no, his_time_text(r.cancelled_at)));
    END IF;
    IF p_amount_fen IS DISTINCT FROM r.amount_fen THEN
        PERFORM his_fail('2003', format('金额不符 (amount %s fen, refund applied for %s fen)', p_amount_fen, r.amount_fen));
    END IF;
    v_receipt := r.writeback_receipt_no;
    IF v_receipt IS NULL THEN
        v_receipt := 'TF' || to_char(v_now, 'YYYYMMDD') || lpad(r.id::TEXT, 6, '0');
        UPDATE refunds SET channel_refund_no = p_channel_refund_no, refund_time = p_refund_time,
            writeback_receipt_no = v_receipt, written_back_at = v_now WHERE id = r.id;
    END IF;
    PERFORM his_applied('WritebackRefund', p_trade_no, p_refund_no);
    RETURN v_receipt;
END $$;

CREATE FUNCTION his_core_cancel_refund(
    p_trade_no TEXT, p_refund_no TEXT, p_reason TEXT, OUT receipt_no TEXT, OUT amount_fen BIGINT
) LANGUAGE plpgsql AS $$
DECLARE r refunds; t trades; v_now TIMESTAMP(0) := his_now(); v_live BIGINT;
BEGIN
    PERFORM his_require(p_trade_no, 'TradeNo');
    PERFORM his_require(p_refund_no, 'RefundNo');
    r := his_refund_of(p_trade_no, p_refund_no);
    amount_fen := r.amount_fen;
    receipt_no := r.cancel_receipt_no;
    IF receipt_no IS NULL THEN
        IF r.writeback_receipt_no IS NOT NULL THEN
            PERFORM his_fail('3004', format('退款已完成，不能撤销 (refund %s was written back at %s with channel refund %s: the money went back)',
                p_refund_no, his_time_text(r.written_back_at), r.channel_refund_no));
        END IF;
        SELECT * INTO t FROM trades WHERE id = r.trade_id FOR UPDATE;
        v_live := his_live_refunds_fen(p_trade_no);
        PERFORM his_refund_total_changed(t, v_live, v_live - r.amount_fen);
        IF t.kind = 'prepay' THEN
            UPDATE inpatients SET balance_fen = balance_fen + r.amount_fen WHERE inpatient_no = t.inpatient_no;
        END IF;
        receipt_no := 'CX' || to_char(v_now, 'YYYYMMDD') || lpad(r.id::TEXT, 6, '0');
        UPDATE refunds SET cancel_receipt_no = his_core_cancel_refund.receipt_no, cancel_reason = p_reason,
            cancelled_at = v_now WHERE id = r.id;
    END IF;
    PERFORM his_applied('CancelRefund', p_trade_no, p_refund_no);
END $$;

-- --- checks and reconciliation -----------------------------------------------------------------------------

CREATE FUNCTION his_core_check_trade(
    p_trade_no TEXT, p_operation TEXT, p_refund_no TEXT,
    OUT is_found BOOLEAN, OUT receipt_no TEXT, OUT amount_fen BIGINT, OUT status TEXT
) LANGUAGE plpgsql AS $$
DECLARE v_op TEXT; t trades; l locks; r refunds; v_refunded BIGINT;
BEGIN
    v_op := CASE p_operation
        WHEN 'LockRegistration' THEN 'registration.lock' WHEN 'UnlockRegistration' THEN 'registration.unlock'
        WHEN 'CommitRegistration' THEN 'registration.commit' WHEN 'CommitCharge' THEN 'charge.commit'
        WHEN 'CommitPrepay' THEN 'prepay.commit' WHEN 'ApplyRefund' THEN 'refund.apply'
        WHEN 'WritebackRefund' THEN 'refund.writeback' WHEN 'CancelRefund' THEN 'refund.cancel' ELSE p_operation END;
    is_found := FALSE;
    IF v_op IN ('registration.commit', 'charge.commit', 'prepay.commit') THEN
        SELECT * INTO t FROM trades WHERE trade_no = p_trade_no AND kind = split_part(v_op, '.', 1) ORDER BY id LIMIT 1;
        IF NOT FOUND THEN RETURN; END IF;
        SELECT coalesce(sum(x.amount_fen), 0) INTO v_refunded FROM refunds x WHERE x.trade_id = t.id AND x.cancelled_at IS NULL;
        is_found := TRUE; receipt_no := t.receipt_no; amount_fen := t.amount_fen;
        status := CASE WHEN v_refunded = 0 THEN 'paid' WHEN v_refunded >= t.amount_fen THEN 'refunded' ELSE 'partial' END;
    ELSIF v_op IN ('registration.lock', 'registration.unlock') THEN
        SELECT * INTO l FROM locks WHERE trade_no = p_trade_no AND (v_op = 'registration.lock' OR locks.status = 'unlocked')
        ORDER BY id LIMIT 1;
        IF NOT FOUND THEN RETURN; END IF;
        is_found := TRUE; receipt_no := l.lock_id; amount_fen := l.amount_fen;
        status := CASE WHEN l.status = 'locked' AND l.expires_at <= his_now() THEN 'expired' ELSE l.status END;
    ELSIF v_op IN ('refund.apply', 'refund.writeback', 'refund.cancel') THEN
        IF coalesce(p_refund_no, '') = '' THEN
            PERFORM his_fail('9001', format('缺少退款单号 (RefundNo is required to check %s)', v_op));
        END IF;
        SELECT * INTO r FROM refunds WHERE refund_no = p_refund_no AND trade_no = p_trade_no;
        IF NOT FOUND THEN RETURN; END IF;
        status := CASE WHEN r.cancel_receipt_no IS NOT NULL THEN 'cancelled'
            WHEN r.writeback_receipt_no IS NOT NULL THEN 'written_back' ELSE 'applied' END;
        IF v_op = 'refund.apply' THEN
            is_found := TRUE; receipt_no := r.his_refund_id; amount_fen := r.refundable_fen;
        ELSE
            receipt_no := CASE WHEN v_op = 'refund.writeback' THEN r.writeback_receipt_no ELSE r.cancel_receipt_no END;
            IF receipt_no IS NOT NULL THEN
                is_found := TRUE; amount_fen := r.amount_fen;
            ELSE
                status := NULL;
            END IF;
        END IF;
    ELSE
        PERFORM his_fail('9001', format('不支持的业务类型 (Operation %L is not a write the HIS records)', p_operation));
    END IF;
END $$;

-- A day of the HIS's books: payments by the time recorded, refund applications by the time applied (written
-- back or not, with their state); a cancelled application is no longer in the books.
CREATE FUNCTION his_core_recon(p_date DATE)
RETURNS TABLE (src INTEGER, id BIGINT, trade_no TEXT, kind TEXT, receipt_no TEXT, amount_fen BIGINT, pay_mode TEXT,
               channel_trade_no TEXT, refund_no TEXT, at_time TIMESTAMP(0), refund_state TEXT,
               channel_refund_no TEXT, written_back_at TIMESTAMP(0))
LANGUAGE sql STABLE AS $$
    SELECT 0, t.id, t.trade_no, t.kind, t.receipt_no, t.amount_fen, t.pay_mode, t.channel_trade_no, NULL, t.recorded_at,
           NULL, NULL, NULL
    FROM trades t WHERE t.recorded_at >= p_date AND t.recorded_at < p_date + 1
    UNION ALL
    SELECT 1, r.id, r.trade_no, 'refund', r.writeback_receipt_no, r.amount_fen, t.pay_mode, t.channel_trade_no,
           r.refund_no, r.applied_at, CASE WHEN r.writeback_receipt_no IS NULL THEN 'applied' ELSE 'written_back' END,
           r.channel_refund_no, r.written_back_at
    FROM refunds r JOIN trades t ON t.id = r.trade_id
    WHERE r.applied_at >= p_date AND r.applied_at < p_date + 1 AND r.cancelled_at IS NULL
$$;

CREATE FUNCTION his_check_page(p_page BIGINT, p_page_size BIGINT) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    IF p_page IS NULL OR p_page < 1 OR p_page_size IS NULL OR p_page_size < 1 OR p_page_size > 1000 THEN
        PERFORM his_fail('9001', '分页参数无效 (PageNo >= 1, 1 <= PageSize <= 1000)');
    END IF;
END $$;
