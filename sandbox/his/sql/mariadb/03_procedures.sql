-- What the bridge calls, shaped like real HIS interfaces on MariaDB:
--   * his_dispatch(method, in_xml, OUT out_xml): one procedure for everything, XML in and XML out, the same inner
--     documents as the sandbox's SOAP service (docs/SANDBOX_HIS.md). Read the OUT value through a session
--     variable: CALL his_dispatch(?, ?, @out_xml); SELECT @out_xml;
--   * the Winning-style three-step charge, answering status result sets ('T'/'F', code, message, ...):
--     his_charge_open -> his_charge_add_line (per bill) -> his_charge_submit, meant to run in ONE transaction on
--     one connection. his_charge_submit answers three result sets, as SQL Server procedures with SET NOCOUNT ON
--     do: the lines, the totals, then the status.
-- Every procedure first consults his_faults under its own name (the dispatcher under the method name).

DELIMITER $$

CREATE FUNCTION his_xr(p_doc MEDIUMTEXT, p_path VARCHAR(200)) RETURNS TEXT NOT DETERMINISTIC
BEGIN
    DECLARE v TEXT DEFAULT his_x(p_doc, p_path);
    IF v IS NULL THEN
        CALL his_fail(9001, CONCAT('缺少必填项 (', p_path, ' is required)'));
    END IF;
    RETURN v;
END$$

CREATE FUNCTION his_xfen(p_doc MEDIUMTEXT, p_path VARCHAR(200)) RETURNS BIGINT NOT DETERMINISTIC
BEGIN
    DECLARE v TEXT DEFAULT his_xr(p_doc, p_path);
    IF v NOT REGEXP '^[0-9]{1,10}([.][0-9]{1,2})?$' THEN
        CALL his_fail(9001, CONCAT('金额格式错误 (', p_path, ' must be yuan with at most two decimals, got ', QUOTE(v), ')'));
    END IF;
    RETURN CAST(CAST(v AS DECIMAL(14, 2)) * 100 AS SIGNED);
END$$

CREATE FUNCTION his_xtime(p_doc MEDIUMTEXT, p_path VARCHAR(200)) RETURNS DATETIME NOT DETERMINISTIC
BEGIN
    DECLARE v TEXT DEFAULT his_xr(p_doc, p_path);
    DECLARE t DATETIME DEFAULT NULL;
    IF v REGEXP '^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$' THEN
        SET t = STR_TO_DATE(v, '%Y-%m-%d %H:%i:%s');
    END IF;
    IF t IS NULL THEN
        CALL his_fail(9001, CONCAT('时间格式错误 (', p_path, ' must be YYYY-MM-DD HH:MM:SS, got ', QUOTE(v), ')'));
    END IF;
    RETURN t;
END$$

CREATE FUNCTION his_xdate(p_doc MEDIUMTEXT, p_path VARCHAR(200)) RETURNS DATE NOT DETERMINISTIC
BEGIN
    DECLARE v TEXT DEFAULT his_xr(p_doc, p_path);
    DECLARE t DATE DEFAULT NULL;
    IF v REGEXP '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' THEN
        SET t = STR_TO_DATE(v, '%Y-%m-%d');
    END IF;
    IF t IS NULL THEN
        CALL his_fail(9001, CONCAT('日期格式错误 (', p_path, ' must be YYYY-MM-DD, got ', QUOTE(v), ')'));
    END IF;
    RETURN t;
END$$

CREATE FUNCTION his_xint(p_doc MEDIUMTEXT, p_path VARCHAR(200), p_default BIGINT) RETURNS BIGINT NOT DETERMINISTIC
BEGIN
    DECLARE v TEXT DEFAULT his_x(p_doc, p_path);
    IF v IS NULL THEN
        RETURN p_default;
    END IF;
    IF v NOT REGEXP '^[0-9]{1,9}$' THEN
        CALL his_fail(9001, CONCAT('数值格式错误 (', p_path, ' must be a non-negative integer, got ', QUOTE(v), ')'));
    END IF;
    RETURN CAST(v AS SIGNED);
END$$

CREATE FUNCTION his_time_text(p_time DATETIME) RETURNS VARCHAR(19) DETERMINISTIC
    RETURN DATE_FORMAT(p_time, '%Y-%m-%d %H:%i:%s')$$

-- Yuan DECIMAL to fen, refusing sub-fen amounts instead of rounding them.
CREATE FUNCTION his_fen(p_yuan DECIMAL(20, 6)) RETURNS BIGINT NOT DETERMINISTIC
BEGIN
    IF p_yuan IS NULL OR p_yuan < 0 OR p_yuan <> ROUND(p_yuan, 2) OR p_yuan >= 10000000000 THEN
        CALL his_fail(9001, CONCAT('金额格式错误 (amount must be yuan with at most two decimals, got ', IFNULL(p_yuan, 'NULL'), ')'));
    END IF;
    RETURN CAST(p_yuan * 100 AS SIGNED);
END$$

-- --- the three-step charge ----------------------------------------------------------------------------------

CREATE PROCEDURE his_charge_open(IN p_trade_no VARCHAR(64), IN p_patient_id VARCHAR(64), IN p_operator VARCHAR(64))
BEGIN
    DECLARE v_code VARCHAR(10);
    DECLARE v_session BIGINT;
    DECLARE v_errno INT;
    DECLARE v_message VARCHAR(500);
    DECLARE EXIT HANDLER FOR SQLSTATE '45000'
    BEGIN
        GET DIAGNOSTICS CONDITION 1 v_errno = MYSQL_ERRNO, v_message = MESSAGE_TEXT;
        SELECT 'F' AS status, CAST(v_errno AS CHAR) AS code, v_message AS message, NULL AS session_id;
    END;
    CALL his_fault('his_charge_open', v_code);
    IF v_code IS NOT NULL THEN
        SELECT 'F' AS status, v_code AS code, '系统错误 (injected error)' AS message, NULL AS session_id;
    ELSE
        CALL his_c_charge_open(p_trade_no, p_patient_id, v_session);
        SELECT 'T' AS status, '0' AS code, '成功' AS message, v_session AS session_id;
    END IF;
END$$

CREATE PROCEDURE his_charge_add_line(IN p_session_id BIGINT, IN p_bill_no VARCHAR(64))
BEGIN
    DECLARE v_code VARCHAR(10);
    DECLARE v_line INT;
    DECLARE v_amount BIGINT;
    DECLARE v_errno INT;
    DECLARE v_message VARCHAR(500);
    DECLARE EXIT HANDLER FOR SQLSTATE '45000'
    BEGIN
        GET DIAGNOSTICS CONDITION 1 v_errno = MYSQL_ERRNO, v_message = MESSAGE_TEXT;
        SELECT 'F' AS status, CAST(v_errno AS CHAR) AS code, v_message AS message;
    END;
    CALL his_fault('his_charge_add_line', v_code);
    IF v_code IS NOT NULL THEN
        SELECT 'F' AS status, v_code AS code, '系统错误 (injected error)' AS message;
    ELSE
        CALL his_c_charge_add_line(p_session_id, p_bill_no, v_line, v_amount);
        SELECT 'T' AS status, '0' AS code, '成功' AS message, v_line AS line_no, his_yuan(v_amount) AS amount;
    END IF;
END$$

CREATE PROCEDURE his_charge_submit(
    IN p_session_id BIGINT, IN p_amount DECIMAL(20, 6), IN p_pay_mode VARCHAR(10), IN p_channel_trade_no VARCHAR(64),
    IN p_pay_time DATETIME)
BEGIN
    DECLARE v_code VARCHAR(10);
    DECLARE v_receipt VARCHAR(32);
    DECLARE v_errno INT;
    DECLARE v_message VARCHAR(500);
    DECLARE EXIT HANDLER FOR SQLSTATE '45000'
    BEGIN
        GET DIAGNOSTICS CONDITION 1 v_errno = MYSQL_ERRNO, v_message = MESSAGE_TEXT;
        SELECT 'F' AS status, CAST(v_errno AS CHAR) AS code, v_message AS message, NULL AS receipt_no;
    END;
    CALL his_fault('his_charge_submit', v_code);
    IF v_code IS NOT NULL THEN
        SELECT 'F' AS status, v_code AS code, '系统错误 (injected error)' AS message, NULL AS receipt_no;
    ELSE
        SELECT l.line_no, l.bill_no, b.dept_name, his_yuan(b.amount_fen) AS amount
        FROM his_charge_lines l JOIN bills b ON b.bill_no = l.bill_no WHERE l.session_id = p_session_id ORDER BY l.line_no;
        SELECT COUNT(*) AS line_count, his_yuan(IFNULL(SUM(b.amount_fen), 0)) AS total
        FROM his_charge_lines l JOIN bills b ON b.bill_no = l.bill_no WHERE l.session_id = p_session_id;
        CALL his_c_charge_submit(p_session_id, his_fen(p_amount), p_pay_mode, p_channel_trade_no, p_pay_time, v_receipt);
        SELECT 'T' AS status, '0' AS code, '成功' AS message, v_receipt AS receipt_no;
    END IF;
END$$

-- --- the XML dispatcher ------------------------------------------------------------------------------------

CREATE PROCEDURE his_dispatch(IN p_method VARCHAR(64), IN p_in_xml MEDIUMTEXT, OUT out_xml MEDIUMTEXT)
BEGIN
    DECLARE d MEDIUMTEXT;
    DECLARE v_code VARCHAR(10);
    DECLARE v_body MEDIUMTEXT DEFAULT '';
    DECLARE v_errno INT;
    DECLARE v_message VARCHAR(500);
    DECLARE v_trade, v_patient, v_bill, v_ctn, v_refund VARCHAR(64);
    DECLARE v_pay_mode VARCHAR(10);
    DECLARE v_fen, v_total, v_amount, v_session, v_page, v_size BIGINT;
    DECLARE v_time DATETIME;
    DECLARE v_date DATE;
    DECLARE v_a, v_b VARCHAR(64);
    DECLARE v_c VARCHAR(20);
    DECLARE v_found INT;
    DECLARE i, n, v_count INT;
    DECLARE v_seen TEXT DEFAULT '';
    DECLARE EXIT HANDLER FOR SQLSTATE '45000'
    BEGIN
        GET DIAGNOSTICS CONDITION 1 v_errno = MYSQL_ERRNO, v_message = MESSAGE_TEXT;
        SET out_xml = CONCAT('<?xml version="1.0" encoding="utf-8"?><Response>', his_el('ResultCode', v_errno),
                             his_el('ResultMsg', v_message), '</Response>');
    END;
    CALL his_fault(p_method, v_code);
    IF v_code IS NOT NULL THEN
        CALL his_fail(CAST(v_code AS UNSIGNED), '系统错误 (injected error)');
    END IF;
    SET d = REGEXP_REPLACE(IFNULL(p_in_xml, ''), '^\\s*<\\?xml[^>]*\\?>', '');
    IF IFNULL(ExtractValue(d, 'count(/*)'), 0) <> 1 THEN
        SIGNAL SQLSTATE '22023' SET MESSAGE_TEXT = 'his_dispatch: in_xml is not a well-formed XML document';
    END IF;
    IF ExtractValue(d, 'count(/Request)') <> 1 THEN
        CALL his_fail(9001, '请求格式错误 (root element must be Request)');
    END IF;
    CASE p_method
    WHEN 'QueryPatient' THEN
        CALL his_c_query_patient(his_x(d, 'CardNo'), his_x(d, 'IdCardNo'), his_x(d, 'Phone'), v_patient);
        SELECT CONCAT('<Patient>', his_el('PatientId', patient_id), his_el('Name', name), his_el('Gender', gender),
                      his_el('BirthDate', DATE_FORMAT(birth_date, '%Y-%m-%d')), his_el('CardNo', card_no),
                      his_el('Phone', phone), '</Patient>')
        INTO v_body FROM patients WHERE patient_id = v_patient;
    WHEN 'QueryUnpaidBills' THEN
        SET v_patient = his_xr(d, 'PatientId');
        CALL his_patient(v_patient);
        SELECT CONCAT('<Bills>', IFNULL(GROUP_CONCAT(CONCAT('<Bill>', his_el('BillNo', bill_no), his_el('DeptName', dept_name),
                      his_el('Amount', his_yuan(amount_fen)), his_el('CreatedAt', his_time_text(created_at)), '</Bill>')
                      ORDER BY bill_no SEPARATOR ''), ''), '</Bills>')
        INTO v_body FROM bills WHERE patient_id = v_patient AND status = 'unpaid';
    WHEN 'LockRegistration' THEN
        CALL his_c_lock(his_xr(d, 'TradeNo'), his_xr(d, 'PatientId'), his_xr(d, 'ScheduleId'), v_a, v_fen, v_time);
        SET v_body = CONCAT(his_el('LockId', v_a), his_el('Amount', his_yuan(v_fen)), his_el('ExpireTime', his_time_text(v_time)));
    WHEN 'UnlockRegistration' THEN
        CALL his_c_unlock(his_xr(d, 'TradeNo'), his_xr(d, 'LockId'));
    WHEN 'CommitRegistration' THEN
        CALL his_c_commit_registration(his_xr(d, 'TradeNo'), his_xr(d, 'PatientId'), his_xr(d, 'ScheduleId'),
            his_x(d, 'LockId'), his_xfen(d, 'Amount'), his_xr(d, 'PayMode'), his_xr(d, 'ChannelTradeNo'),
            his_xtime(d, 'PayTime'), v_a, v_b);
        SET v_body = CONCAT(his_el('ReceiptNo', v_a), his_el('VisitNo', v_b));
    WHEN 'CommitCharge' THEN
        SET v_trade = his_xr(d, 'TradeNo'), v_patient = his_xr(d, 'PatientId'), v_fen = his_xfen(d, 'Amount');
        SET v_pay_mode = his_xr(d, 'PayMode'), v_ctn = his_xr(d, 'ChannelTradeNo'), v_time = his_xtime(d, 'PayTime');
        CALL his_check_paid(v_fen, v_pay_mode, v_ctn, v_time);
        SET v_count = ExtractValue(d, 'count(/Request/BillNos/BillNo)'), i = 1, n = 0, v_total = 0;
        WHILE i <= v_count DO
            SET v_bill = NULLIF(TRIM(his_xu(ExtractValue(d, CONCAT('/Request/BillNos/BillNo[', i, ']')))), '');
            IF v_bill IS NOT NULL THEN
                IF LOCATE(CONCAT(CHAR(1), v_bill, CHAR(1)), v_seen) > 0 THEN
                    CALL his_fail(9001, '缴费单号为空或重复 (BillNos must be non-empty and distinct)');
                END IF;
                SET v_seen = CONCAT(v_seen, CHAR(1), v_bill, CHAR(1)), n = n + 1;
            END IF;
            SET i = i + 1;
        END WHILE;
        IF n = 0 THEN
            CALL his_fail(9001, '缴费单号为空或重复 (BillNos must be non-empty and distinct)');
        END IF;
        CALL his_patient(v_patient);
        SET i = 1;
        WHILE i <= v_count DO
            SET v_bill = NULLIF(TRIM(his_xu(ExtractValue(d, CONCAT('/Request/BillNos/BillNo[', i, ']')))), '');
            IF v_bill IS NOT NULL THEN
                CALL his_check_bill(v_patient, v_bill, v_amount);
                SET v_total = v_total + v_amount;
            END IF;
            SET i = i + 1;
        END WHILE;
        IF v_fen <> v_total THEN
            CALL his_fail(2003, CONCAT('金额不符 (amount ', v_fen, ' fen, bills total ', v_total, ' fen)'));
        END IF;
        CALL his_c_charge_open(v_trade, v_patient, v_session);
        SET i = 1;
        WHILE i <= v_count DO
            SET v_bill = NULLIF(TRIM(his_xu(ExtractValue(d, CONCAT('/Request/BillNos/BillNo[', i, ']')))), '');
            IF v_bill IS NOT NULL THEN
                CALL his_c_charge_add_line(v_session, v_bill, n, v_amount);
            END IF;
            SET i = i + 1;
        END WHILE;
        CALL his_c_charge_submit(v_session, v_fen, v_pay_mode, v_ctn, v_time, v_a);
        SET v_body = his_el('ReceiptNo', v_a);
    WHEN 'CommitPrepay' THEN
        CALL his_c_commit_prepay(his_xr(d, 'TradeNo'), his_xr(d, 'PatientId'), his_xr(d, 'InpatientNo'),
            his_xfen(d, 'Amount'), his_xr(d, 'PayMode'), his_xr(d, 'ChannelTradeNo'), his_xtime(d, 'PayTime'), v_a, v_fen);
        SET v_body = CONCAT(his_el('ReceiptNo', v_a), his_el('Balance', his_yuan(v_fen)));
    WHEN 'ApplyRefund' THEN
        CALL his_c_apply_refund(his_xr(d, 'TradeNo'), his_xr(d, 'RefundNo'), his_xfen(d, 'Amount'), his_x(d, 'Reason'),
            v_fen, v_a);
        SET v_body = CONCAT(his_el('RefundableAmount', his_yuan(v_fen)), his_el('HisRefundId', v_a));
    WHEN 'WritebackRefund' THEN
        CALL his_c_writeback_refund(his_xr(d, 'TradeNo'), his_xr(d, 'RefundNo'), his_xfen(d, 'Amount'),
            his_xr(d, 'ChannelRefundNo'), his_xtime(d, 'RefundTime'), v_a);
        SET v_body = his_el('ReceiptNo', v_a);
    WHEN 'CancelRefund' THEN
        CALL his_c_cancel_refund(his_xr(d, 'TradeNo'), his_xr(d, 'RefundNo'), his_x(d, 'Reason'), v_a, v_fen);
        SET v_body = CONCAT(his_el('ReceiptNo', v_a), his_el('Amount', his_yuan(v_fen)));
    WHEN 'CheckTrade' THEN
        CALL his_c_check_trade(his_xr(d, 'TradeNo'), his_xr(d, 'Operation'), his_x(d, 'RefundNo'), v_found, v_a, v_fen, v_c);
        SET v_body = CONCAT(his_el('Found', v_found), his_el('ReceiptNo', v_a), his_el('Amount', his_yuan(v_fen)),
                            his_el('Status', v_c));
    WHEN 'FetchRecon' THEN
        SET v_date = his_xdate(d, 'Date'), v_page = his_xint(d, 'PageNo', 1), v_size = his_xint(d, 'PageSize', 500);
        IF v_page < 1 OR v_size < 1 OR v_size > 1000 THEN
            CALL his_fail(9001, '分页参数无效 (PageNo >= 1, 1 <= PageSize <= 1000)');
        END IF;
        DROP TEMPORARY TABLE IF EXISTS his_recon_day;
        CREATE TEMPORARY TABLE his_recon_day AS
            SELECT 0 AS src, t.id, t.trade_no, t.kind, t.receipt_no, t.amount_fen, t.pay_mode, t.channel_trade_no,
                   CAST(NULL AS CHAR(64)) AS refund_no, t.recorded_at AS at_time, CAST(NULL AS CHAR(20)) AS refund_state,
                   CAST(NULL AS CHAR(64)) AS channel_refund_no, CAST(NULL AS DATETIME) AS written_back_at
            FROM trades t WHERE t.recorded_at >= v_date AND t.recorded_at < v_date + INTERVAL 1 DAY
            UNION ALL
            SELECT 1, r.id, r.trade_no, 'refund', r.writeback_receipt_no, r.amount_fen, t.pay_mode, t.channel_trade_no,
                   r.refund_no, r.applied_at, IF(r.writeback_receipt_no IS NULL, 'applied', 'written_back'),
                   r.channel_refund_no, r.written_back_at
            FROM refunds r JOIN trades t ON t.id = r.trade_id
            WHERE r.applied_at >= v_date AND r.applied_at < v_date + INTERVAL 1 DAY AND r.cancelled_at IS NULL;
        SELECT COUNT(*) INTO v_total FROM his_recon_day;
        BEGIN
            DECLARE v_offset BIGINT DEFAULT (v_page - 1) * v_size;
            SELECT CONCAT(his_el('Total', v_total), his_el('HasMore', IF(v_page * v_size < v_total, '1', '0')), '<Records>',
                          IFNULL(GROUP_CONCAT(CONCAT('<Record>', his_el('TradeNo', x.trade_no), his_el('Kind', x.kind),
                              his_el('ReceiptNo', x.receipt_no), his_el('Amount', his_yuan(x.amount_fen)),
                              his_el('PayMode', x.pay_mode), his_el('ChannelTradeNo', x.channel_trade_no),
                              his_el('RefundNo', x.refund_no), his_el('Time', his_time_text(x.at_time)),
                              his_el('RefundState', x.refund_state), his_el('ChannelRefundNo', x.channel_refund_no),
                              his_el('WrittenBackAt', his_time_text(x.written_back_at)), '</Record>')
                          ORDER BY x.at_time, x.src, x.id SEPARATOR ''), ''), '</Records>')
            INTO v_body
            FROM (SELECT * FROM his_recon_day ORDER BY at_time, src, id LIMIT v_offset, v_size) x;
        END;
        DROP TEMPORARY TABLE IF EXISTS his_recon_day;
    ELSE
        SIGNAL SQLSTATE '22023' SET MESSAGE_TEXT = 'his_dispatch: unknown method';
    END CASE;
    SET out_xml = CONCAT('<?xml version="1.0" encoding="utf-8"?><Response><ResultCode>0</ResultCode><ResultMsg>成功</ResultMsg>',
                         IFNULL(v_body, ''), '</Response>');
END$$

DELIMITER ;
