-- What the bridge calls, shaped like real HIS interfaces on PostgreSQL:
--   * direct functions, one per business action, answering a status row: status 'T' (done) or 'F' (refused),
--     code (the HIS error code, '0' when done), message, then the data columns;
--   * list reads returning SETOF refcursor (a status cursor, then the rows), PostgreSQL's way of returning
--     several result sets;
--   * the Winning-style three-step charge: his_charge_open -> his_charge_add_line (per bill) -> his_charge_submit,
--     meant to run in ONE transaction on one connection;
--   * his_dispatch(method, in_xml, OUT out_xml): one procedure for everything, XML in and XML out, the same
--     inner documents as the sandbox's SOAP service (docs/SANDBOX_HIS.md).
-- Every routine first consults his_faults under its own name (the dispatcher under the method name).

-- --- direct functions --------------------------------------------------------------------------------------

CREATE FUNCTION his_patient_query(p_card_no TEXT, p_id_card_no TEXT, p_phone TEXT)
RETURNS TABLE (status TEXT, code TEXT, message TEXT, patient_id TEXT, name TEXT, gender TEXT, birth_date DATE,
               card_no TEXT, phone TEXT)
LANGUAGE plpgsql AS $$
DECLARE p patients;
BEGIN
    code := his_fault('his_patient_query');
    IF code IS NULL THEN
        BEGIN
            p := his_core_query_patient(p_card_no, p_id_card_no, p_phone);
            status := 'T'; code := '0'; message := '成功';
            patient_id := p.patient_id; name := p.name; gender := p.gender; birth_date := p.birth_date;
            card_no := p.card_no; phone := p.phone;
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION his_unpaid_bills(p_patient_id TEXT) RETURNS SETOF REFCURSOR LANGUAGE plpgsql AS $$
DECLARE c_status REFCURSOR; c_rows REFCURSOR; v_code TEXT; v_message TEXT;
BEGIN
    v_code := his_fault('his_unpaid_bills');
    IF v_code IS NULL THEN
        BEGIN
            PERFORM his_patient(p_patient_id);
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            v_code := substr(SQLSTATE, 2); v_message := SQLERRM;
        END;
    ELSE
        v_message := '系统错误 (injected error)';
    END IF;
    OPEN c_status FOR SELECT CASE WHEN v_code IS NULL THEN 'T' ELSE 'F' END AS status,
        coalesce(v_code, '0') AS code, coalesce(v_message, '成功') AS message;
    RETURN NEXT c_status;
    IF v_code IS NULL THEN
        OPEN c_rows FOR SELECT b.bill_no, b.dept_name, his_yuan(b.amount_fen) AS amount, b.created_at
            FROM bills b WHERE b.patient_id = p_patient_id AND b.status = 'unpaid' ORDER BY b.bill_no;
        RETURN NEXT c_rows;
    END IF;
END $$;

CREATE FUNCTION his_trade_check(p_trade_no TEXT, p_operation TEXT, p_refund_no TEXT)
RETURNS TABLE (status TEXT, code TEXT, message TEXT, is_found INTEGER, receipt_no TEXT, amount NUMERIC(12, 2),
               trade_status TEXT)
LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    code := his_fault('his_trade_check');
    IF code IS NULL THEN
        BEGIN
            r := his_core_check_trade(p_trade_no, p_operation, p_refund_no);
            status := 'T'; code := '0'; message := '成功';
            is_found := r.is_found::INTEGER; receipt_no := r.receipt_no; amount := his_yuan(r.amount_fen);
            trade_status := r.status;
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION his_recon_fetch(p_date DATE, p_page BIGINT, p_page_size BIGINT) RETURNS SETOF REFCURSOR
LANGUAGE plpgsql AS $$
DECLARE c_status REFCURSOR; c_rows REFCURSOR; v_code TEXT; v_message TEXT; v_total BIGINT;
BEGIN
    v_code := his_fault('his_recon_fetch');
    IF v_code IS NULL THEN
        BEGIN
            PERFORM his_check_page(p_page, p_page_size);
            IF p_date IS NULL THEN
                PERFORM his_fail('9001', '缺少必填项 (Date is required)');
            END IF;
            SELECT count(*) INTO v_total FROM his_core_recon(p_date);
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            v_code := substr(SQLSTATE, 2); v_message := SQLERRM;
        END;
    ELSE
        v_message := '系统错误 (injected error)';
    END IF;
    OPEN c_status FOR SELECT CASE WHEN v_code IS NULL THEN 'T' ELSE 'F' END AS status,
        coalesce(v_code, '0') AS code, coalesce(v_message, '成功') AS message, v_total AS total,
        (p_page * p_page_size < v_total)::INTEGER AS has_more;
    RETURN NEXT c_status;
    IF v_code IS NULL THEN
        OPEN c_rows FOR SELECT x.trade_no, x.kind, x.receipt_no, his_yuan(x.amount_fen) AS amount, x.pay_mode,
                x.channel_trade_no, x.refund_no, x.at_time AS time, x.refund_state, x.channel_refund_no,
                x.written_back_at
            FROM his_core_recon(p_date) x ORDER BY x.at_time, x.src, x.id
            LIMIT p_page_size OFFSET (p_page - 1) * p_page_size;
        RETURN NEXT c_rows;
    END IF;
END $$;

CREATE FUNCTION his_reg_lock(p_trade_no TEXT, p_patient_id TEXT, p_schedule_id TEXT)
RETURNS TABLE (status TEXT, code TEXT, message TEXT, lock_id TEXT, amount NUMERIC(12, 2), expire_time TIMESTAMP(0))
LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    code := his_fault('his_reg_lock');
    IF code IS NULL THEN
        BEGIN
            r := his_core_lock(p_trade_no, p_patient_id, p_schedule_id);
            status := 'T'; code := '0'; message := '成功';
            lock_id := r.lock_id; amount := his_yuan(r.amount_fen); expire_time := r.expire_time;
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION his_reg_unlock(p_trade_no TEXT, p_lock_id TEXT)
RETURNS TABLE (status TEXT, code TEXT, message TEXT) LANGUAGE plpgsql AS $$
BEGIN
    code := his_fault('his_reg_unlock');
    IF code IS NULL THEN
        BEGIN
            PERFORM his_core_unlock(p_trade_no, p_lock_id);
            status := 'T'; code := '0'; message := '成功';
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION his_reg_commit(
    p_trade_no TEXT, p_patient_id TEXT, p_schedule_id TEXT, p_lock_id TEXT, p_amount NUMERIC, p_pay_mode TEXT,
    p_channel_trade_no TEXT, p_pay_time TIMESTAMP
) RETURNS TABLE (status TEXT, code TEXT, message TEXT, receipt_no TEXT, visit_no TEXT) LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    code := his_fault('his_reg_commit');
    IF code IS NULL THEN
        BEGIN
            r := his_core_commit_registration(p_trade_no, p_patient_id, p_schedule_id, p_lock_id, his_fen(p_amount),
                                              p_pay_mode, p_channel_trade_no, p_pay_time);
            status := 'T'; code := '0'; message := '成功'; receipt_no := r.receipt_no; visit_no := r.visit_no;
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION his_prepay_commit(
    p_trade_no TEXT, p_patient_id TEXT, p_inpatient_no TEXT, p_amount NUMERIC, p_pay_mode TEXT,
    p_channel_trade_no TEXT, p_pay_time TIMESTAMP
) RETURNS TABLE (status TEXT, code TEXT, message TEXT, receipt_no TEXT, balance NUMERIC(12, 2)) LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    code := his_fault('his_prepay_commit');
    IF code IS NULL THEN
        BEGIN
            r := his_core_commit_prepay(p_trade_no, p_patient_id, p_inpatient_no, his_fen(p_amount), p_pay_mode,
                                        p_channel_trade_no, p_pay_time);
            status := 'T'; code := '0'; message := '成功'; receipt_no := r.receipt_no; balance := his_yuan(r.balance_fen);
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION his_refund_apply(p_trade_no TEXT, p_refund_no TEXT, p_amount NUMERIC, p_reason TEXT)
RETURNS TABLE (status TEXT, code TEXT, message TEXT, refundable NUMERIC(12, 2), his_refund_id TEXT)
LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    code := his_fault('his_refund_apply');
    IF code IS NULL THEN
        BEGIN
            r := his_core_apply_refund(p_trade_no, p_refund_no, his_fen(p_amount), p_reason);
            status := 'T'; code := '0'; message := '成功';
            refundable := his_yuan(r.refundable_fen); his_refund_id := r.his_refund_id;
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION his_refund_writeback(
    p_trade_no TEXT, p_refund_no TEXT, p_amount NUMERIC, p_channel_refund_no TEXT, p_refund_time TIMESTAMP
) RETURNS TABLE (status TEXT, code TEXT, message TEXT, receipt_no TEXT) LANGUAGE plpgsql AS $$
BEGIN
    code := his_fault('his_refund_writeback');
    IF code IS NULL THEN
        BEGIN
            receipt_no := his_core_writeback_refund(p_trade_no, p_refund_no, his_fen(p_amount), p_channel_refund_no,
                                                    p_refund_time);
            status := 'T'; code := '0'; message := '成功';
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION his_refund_cancel(p_trade_no TEXT, p_refund_no TEXT, p_reason TEXT)
RETURNS TABLE (status TEXT, code TEXT, message TEXT, receipt_no TEXT, amount NUMERIC(12, 2)) LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    code := his_fault('his_refund_cancel');
    IF code IS NULL THEN
        BEGIN
            r := his_core_cancel_refund(p_trade_no, p_refund_no, p_reason);
            status := 'T'; code := '0'; message := '成功';
            receipt_no := r.receipt_no; amount := his_yuan(r.amount_fen);
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

-- --- the three-step charge ----------------------------------------------------------------------------------

CREATE FUNCTION his_charge_open(p_trade_no TEXT, p_patient_id TEXT, p_operator TEXT)
RETURNS TABLE (status TEXT, code TEXT, message TEXT, session_id BIGINT) LANGUAGE plpgsql AS $$
BEGIN
    code := his_fault('his_charge_open');
    IF code IS NULL THEN
        BEGIN
            PERFORM his_require(p_trade_no, 'TradeNo');
            PERFORM his_patient(p_patient_id);
            INSERT INTO his_charge_sessions (trade_no, patient_id, opened_at) VALUES (p_trade_no, p_patient_id, his_now())
            RETURNING his_charge_sessions.session_id INTO session_id;
            status := 'T'; code := '0'; message := '成功';
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM; session_id := NULL;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION his_charge_session(p_session_id BIGINT) RETURNS his_charge_sessions LANGUAGE plpgsql AS $$
DECLARE s his_charge_sessions;
BEGIN
    SELECT * INTO s FROM his_charge_sessions WHERE his_charge_sessions.session_id = p_session_id FOR UPDATE;
    IF NOT FOUND OR s.submitted_trade_id IS NOT NULL THEN
        PERFORM his_fail('9001', format('收费会话无效 (charge session %s unknown or already submitted)', p_session_id));
    END IF;
    RETURN s;
END $$;

CREATE FUNCTION his_charge_add_line(p_session_id BIGINT, p_bill_no TEXT)
RETURNS TABLE (status TEXT, code TEXT, message TEXT, line_no INTEGER, amount NUMERIC(12, 2)) LANGUAGE plpgsql AS $$
DECLARE s his_charge_sessions; b bills;
BEGIN
    code := his_fault('his_charge_add_line');
    IF code IS NULL THEN
        BEGIN
            s := his_charge_session(p_session_id);
            b := his_check_bill(s.patient_id, p_bill_no);
            IF EXISTS (SELECT 1 FROM his_charge_lines l WHERE l.session_id = s.session_id AND l.bill_no = p_bill_no) THEN
                PERFORM his_fail('9001', '缴费单号为空或重复 (BillNos must be non-empty and distinct)');
            END IF;
            SELECT coalesce(max(l.line_no), 0) + 1 INTO line_no FROM his_charge_lines l WHERE l.session_id = s.session_id;
            INSERT INTO his_charge_lines VALUES (s.session_id, line_no, p_bill_no);
            status := 'T'; code := '0'; message := '成功'; amount := his_yuan(b.amount_fen);
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM; line_no := NULL;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

CREATE FUNCTION his_charge_submit(
    p_session_id BIGINT, p_amount NUMERIC, p_pay_mode TEXT, p_channel_trade_no TEXT, p_pay_time TIMESTAMP
) RETURNS TABLE (status TEXT, code TEXT, message TEXT, receipt_no TEXT) LANGUAGE plpgsql AS $$
DECLARE s his_charge_sessions; v_bills TEXT[];
BEGIN
    code := his_fault('his_charge_submit');
    IF code IS NULL THEN
        BEGIN
            s := his_charge_session(p_session_id);
            SELECT array_agg(l.bill_no ORDER BY l.line_no) INTO v_bills FROM his_charge_lines l
            WHERE l.session_id = s.session_id;
            receipt_no := his_core_commit_charge(s.trade_no, s.patient_id, v_bills, his_fen(p_amount), p_pay_mode,
                                                 p_channel_trade_no, p_pay_time);
            UPDATE his_charge_sessions SET submitted_trade_id = (SELECT t.id FROM trades t WHERE t.receipt_no = his_charge_submit.receipt_no)
            WHERE his_charge_sessions.session_id = s.session_id;
            status := 'T'; code := '0'; message := '成功';
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
            status := 'F'; code := substr(SQLSTATE, 2); message := SQLERRM; receipt_no := NULL;
        END;
    ELSE
        status := 'F'; message := '系统错误 (injected error)';
    END IF;
    RETURN NEXT;
END $$;

-- --- the XML dispatcher ------------------------------------------------------------------------------------

CREATE FUNCTION his_x(p_doc XML, p_path TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT NULLIF(btrim(v), '') FROM XMLTABLE('/Request' PASSING p_doc COLUMNS v TEXT PATH p_path)
$$;

CREATE FUNCTION his_x_required(p_doc XML, p_path TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT his_require(his_x(p_doc, p_path), p_path)
$$;

CREATE FUNCTION his_x_fen(p_doc XML, p_path TEXT) RETURNS BIGINT LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE v TEXT := his_x_required(p_doc, p_path);
BEGIN
    IF v !~ '^[0-9]{1,10}(\.[0-9]{1,2})?$' THEN
        PERFORM his_fail('9001', format('金额格式错误 (%s must be yuan with at most two decimals, got %L)', p_path, v));
    END IF;
    RETURN (v::NUMERIC * 100)::BIGINT;
END $$;

CREATE FUNCTION his_x_time(p_doc XML, p_path TEXT) RETURNS TIMESTAMP LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE v TEXT := his_x_required(p_doc, p_path);
BEGIN
    IF v ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$' THEN
        BEGIN
            RETURN to_timestamp(v, 'YYYY-MM-DD HH24:MI:SS')::TIMESTAMP;
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
    END IF;
    PERFORM his_fail('9001', format('时间格式错误 (%s must be YYYY-MM-DD HH:MM:SS, got %L)', p_path, v));
END $$;

CREATE FUNCTION his_x_int(p_doc XML, p_path TEXT, p_default BIGINT) RETURNS BIGINT LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE v TEXT := his_x(p_doc, p_path);
BEGIN
    IF v IS NULL THEN RETURN p_default; END IF;
    IF v !~ '^[0-9]{1,9}$' THEN
        PERFORM his_fail('9001', format('数值格式错误 (%s must be a non-negative integer, got %L)', p_path, v));
    END IF;
    RETURN v::BIGINT;
END $$;

CREATE FUNCTION his_x_date(p_doc XML, p_path TEXT) RETURNS DATE LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE v TEXT := his_x_required(p_doc, p_path);
BEGIN
    IF v ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' THEN
        BEGIN
            RETURN to_date(v, 'YYYY-MM-DD');
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
    END IF;
    PERFORM his_fail('9001', format('日期格式错误 (%s must be YYYY-MM-DD, got %L)', p_path, v));
END $$;

-- Handles one method on a parsed request; returns the children of <Response> after ResultCode/ResultMsg.
CREATE FUNCTION his_dispatch_body(p_method TEXT, d XML) RETURNS XML LANGUAGE plpgsql AS $$
DECLARE r record; p patients; v_receipt TEXT; v_bills TEXT[];
BEGIN
    CASE p_method
    WHEN 'QueryPatient' THEN
        p := his_core_query_patient(his_x(d, 'CardNo'), his_x(d, 'IdCardNo'), his_x(d, 'Phone'));
        RETURN xmlelement(name "Patient", xmlelement(name "PatientId", p.patient_id), xmlelement(name "Name", p.name),
            xmlelement(name "Gender", p.gender), xmlelement(name "BirthDate", p.birth_date::TEXT),
            xmlelement(name "CardNo", p.card_no), xmlelement(name "Phone", p.phone));
    WHEN 'QueryUnpaidBills' THEN
        RETURN xmlelement(name "Bills", (SELECT xmlagg(xmlelement(name "Bill", xmlelement(name "BillNo", b.bill_no),
                xmlelement(name "DeptName", b.dept_name), xmlelement(name "Amount", his_yuan(b.amount_fen)::TEXT),
                xmlelement(name "CreatedAt", his_time_text(b.created_at))) ORDER BY b.bill_no)
            FROM his_core_unpaid_bills(his_x_required(d, 'PatientId')) b));
    WHEN 'LockRegistration' THEN
        r := his_core_lock(his_x_required(d, 'TradeNo'), his_x_required(d, 'PatientId'), his_x_required(d, 'ScheduleId'));
        RETURN xmlconcat(xmlelement(name "LockId", r.lock_id), xmlelement(name "Amount", his_yuan(r.amount_fen)::TEXT),
            xmlelement(name "ExpireTime", his_time_text(r.expire_time)));
    WHEN 'UnlockRegistration' THEN
        PERFORM his_core_unlock(his_x_required(d, 'TradeNo'), his_x_required(d, 'LockId'));
        RETURN NULL;
    WHEN 'CommitRegistration' THEN
        r := his_core_commit_registration(his_x_required(d, 'TradeNo'), his_x_required(d, 'PatientId'),
            his_x_required(d, 'ScheduleId'), his_x(d, 'LockId'), his_x_fen(d, 'Amount'), his_x_required(d, 'PayMode'),
            his_x_required(d, 'ChannelTradeNo'), his_x_time(d, 'PayTime'));
        RETURN xmlconcat(xmlelement(name "ReceiptNo", r.receipt_no), xmlelement(name "VisitNo", r.visit_no));
    WHEN 'CommitCharge' THEN
        SELECT array_agg(btrim(v)) INTO v_bills
        FROM XMLTABLE('/Request/BillNos/BillNo' PASSING d COLUMNS v TEXT PATH '.') WHERE btrim(coalesce(v, '')) <> '';
        v_receipt := his_core_commit_charge(his_x_required(d, 'TradeNo'), his_x_required(d, 'PatientId'), v_bills,
            his_x_fen(d, 'Amount'), his_x_required(d, 'PayMode'), his_x_required(d, 'ChannelTradeNo'),
            his_x_time(d, 'PayTime'));
        RETURN xmlelement(name "ReceiptNo", v_receipt);
    WHEN 'CommitPrepay' THEN
        r := his_core_commit_prepay(his_x_required(d, 'TradeNo'), his_x_required(d, 'PatientId'),
            his_x_required(d, 'InpatientNo'), his_x_fen(d, 'Amount'), his_x_required(d, 'PayMode'),
            his_x_required(d, 'ChannelTradeNo'), his_x_time(d, 'PayTime'));
        RETURN xmlconcat(xmlelement(name "ReceiptNo", r.receipt_no), xmlelement(name "Balance", his_yuan(r.balance_fen)::TEXT));
    WHEN 'ApplyRefund' THEN
        r := his_core_apply_refund(his_x_required(d, 'TradeNo'), his_x_required(d, 'RefundNo'), his_x_fen(d, 'Amount'),
            his_x(d, 'Reason'));
        RETURN xmlconcat(xmlelement(name "RefundableAmount", his_yuan(r.refundable_fen)::TEXT),
            xmlelement(name "HisRefundId", r.his_refund_id));
    WHEN 'WritebackRefund' THEN
        v_receipt := his_core_writeback_refund(his_x_required(d, 'TradeNo'), his_x_required(d, 'RefundNo'),
            his_x_fen(d, 'Amount'), his_x_required(d, 'ChannelRefundNo'), his_x_time(d, 'RefundTime'));
        RETURN xmlelement(name "ReceiptNo", v_receipt);
    WHEN 'CancelRefund' THEN
        r := his_core_cancel_refund(his_x_required(d, 'TradeNo'), his_x_required(d, 'RefundNo'), his_x(d, 'Reason'));
        RETURN xmlconcat(xmlelement(name "ReceiptNo", r.receipt_no), xmlelement(name "Amount", his_yuan(r.amount_fen)::TEXT));
    WHEN 'CheckTrade' THEN
        r := his_core_check_trade(his_x_required(d, 'TradeNo'), his_x_required(d, 'Operation'), his_x(d, 'RefundNo'));
        RETURN xmlconcat(xmlelement(name "Found", CASE WHEN r.is_found THEN '1' ELSE '0' END),
            xmlelement(name "ReceiptNo", r.receipt_no), xmlelement(name "Amount", his_yuan(r.amount_fen)::TEXT),
            xmlelement(name "Status", r.status));
    WHEN 'FetchRecon' THEN
        DECLARE
            v_date DATE := his_x_date(d, 'Date');
            v_page BIGINT := his_x_int(d, 'PageNo', 1);
            v_size BIGINT := his_x_int(d, 'PageSize', 500);
            v_total BIGINT;
        BEGIN
            PERFORM his_check_page(v_page, v_size);
            SELECT count(*) INTO v_total FROM his_core_recon(v_date);
            RETURN xmlconcat(xmlelement(name "Total", v_total),
                xmlelement(name "HasMore", CASE WHEN v_page * v_size < v_total THEN '1' ELSE '0' END),
                xmlelement(name "Records", (SELECT xmlagg(xmlelement(name "Record",
                        xmlelement(name "TradeNo", x.trade_no), xmlelement(name "Kind", x.kind),
                        xmlelement(name "ReceiptNo", x.receipt_no), xmlelement(name "Amount", his_yuan(x.amount_fen)::TEXT),
                        xmlelement(name "PayMode", x.pay_mode), xmlelement(name "ChannelTradeNo", x.channel_trade_no),
                        xmlelement(name "RefundNo", x.refund_no), xmlelement(name "Time", his_time_text(x.at_time)),
                        xmlelement(name "RefundState", x.refund_state),
                        xmlelement(name "ChannelRefundNo", x.channel_refund_no),
                        xmlelement(name "WrittenBackAt", his_time_text(x.written_back_at)))
                        ORDER BY x.at_time, x.src, x.id)
                    FROM (SELECT * FROM his_core_recon(v_date) y ORDER BY y.at_time, y.src, y.id
                          LIMIT v_size OFFSET (v_page - 1) * v_size) x)));
        END;
    ELSE
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('his_dispatch: unknown method %L', p_method);
    END CASE;
END $$;

CREATE PROCEDURE his_dispatch(IN p_method TEXT, IN p_in_xml TEXT, OUT out_xml TEXT) LANGUAGE plpgsql AS $$
DECLARE d XML; v_code TEXT := '0'; v_message TEXT := '成功'; v_body XML;
BEGIN
    v_code := coalesce(his_fault(p_method), '0');
    IF v_code <> '0' THEN
        v_message := '系统错误 (injected error)';
    ELSE
        d := XMLPARSE(DOCUMENT regexp_replace(coalesce(p_in_xml, ''), '^\s*<\?xml[^>]*\?>', ''));
        IF (xpath('local-name(/*)', d))[1]::TEXT <> 'Request' THEN
            v_code := '9001';
            v_message := format('请求格式错误 (root element must be Request, not %s)', (xpath('name(/*)', d))[1]::TEXT);
        ELSE
            BEGIN
                v_body := his_dispatch_body(p_method, d);
            EXCEPTION WHEN OTHERS THEN
                IF left(SQLSTATE, 1) <> 'H' THEN RAISE; END IF;
                v_code := substr(SQLSTATE, 2); v_message := SQLERRM; v_body := NULL;
            END;
        END IF;
    END IF;
    out_xml := '<?xml version="1.0" encoding="utf-8"?>' || xmlelement(name "Response",
        xmlelement(name "ResultCode", v_code), xmlelement(name "ResultMsg", v_message), v_body)::TEXT;
END $$;
