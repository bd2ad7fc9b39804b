-- The sandbox HIS's rules as MariaDB stored procedures, mirroring sandbox/his/state.py. A business refusal is
-- SIGNAL SQLSTATE '45000' with MYSQL_ERRNO = the HIS error code (1001 patient not found, 2002 bill paid, ...);
-- every rule is checked before anything is written, so a refused call changes nothing. Amounts are BIGINT fen.

DELIMITER $$

CREATE FUNCTION his_now() RETURNS DATETIME NOT DETERMINISTIC
    RETURN CAST(CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', '+08:00') AS DATETIME)$$

CREATE FUNCTION his_yuan(p_fen BIGINT) RETURNS VARCHAR(20) DETERMINISTIC
    RETURN CAST(CAST(p_fen / 100 AS DECIMAL(14, 2)) AS CHAR)$$

CREATE FUNCTION his_xe(p TEXT) RETURNS TEXT DETERMINISTIC
    RETURN REPLACE(REPLACE(REPLACE(REPLACE(p, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;')$$

-- ExtractValue returns text still entity-encoded; decode the predefined entities and the two numeric
-- references templates produce for quotes.
CREATE FUNCTION his_xu(p TEXT) RETURNS TEXT DETERMINISTIC
    RETURN REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(p, '&lt;', '<'), '&gt;', '>'), '&quot;', '"'),
        '&apos;', ''''), '&#39;', ''''), '&#34;', '"'), '&amp;', '&')$$

CREATE FUNCTION his_el(p_name VARCHAR(64), p_value TEXT) RETURNS TEXT DETERMINISTIC
    RETURN IF(p_value IS NULL, CONCAT('<', p_name, '/>'), CONCAT('<', p_name, '>', his_xe(p_value), '</', p_name, '>'))$$

CREATE FUNCTION his_x(p_doc TEXT, p_path VARCHAR(200)) RETURNS TEXT DETERMINISTIC
    RETURN NULLIF(TRIM(his_xu(ExtractValue(p_doc, CONCAT('/Request/', p_path)))), '')$$

CREATE PROCEDURE his_fail(IN p_code INT, IN p_message VARCHAR(500))
BEGIN
    SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = p_code, MESSAGE_TEXT = p_message;
END$$

CREATE PROCEDURE his_applied(IN p_operation VARCHAR(64), IN p_trade_no VARCHAR(64), IN p_refund_no VARCHAR(64))
BEGIN
    INSERT INTO applications (operation, trade_no, refund_no, applied_at) VALUES (p_operation, p_trade_no, p_refund_no, his_now());
END$$

-- Takes the first fault rule for p_operation; o_code is the error code of an 'error' rule, else NULL.
CREATE PROCEDURE his_fault(IN p_operation VARCHAR(64), OUT o_code VARCHAR(10))
BEGIN
    DECLARE v_id BIGINT;
    DECLARE v_mode VARCHAR(10);
    DECLARE v_sleep INT;
    DECLARE v_code VARCHAR(10);
    DECLARE v_remaining INT;
    SET o_code = NULL;
    SELECT id, mode, sleep_ms, error_code, remaining INTO v_id, v_mode, v_sleep, v_code, v_remaining
    FROM his_faults WHERE operation IN (p_operation, '*') ORDER BY id LIMIT 1;
    IF v_id IS NOT NULL THEN
        IF v_remaining IS NOT NULL AND v_remaining <= 1 THEN
            DELETE FROM his_faults WHERE id = v_id;
        ELSE
            UPDATE his_faults SET remaining = remaining - 1, hits = hits + 1 WHERE id = v_id;
        END IF;
        IF v_sleep > 0 AND SLEEP(v_sleep / 1000) = 1 THEN
            -- an interrupted SLEEP returns 1 instead of failing; a real statement would fail, so this does too
            SIGNAL SQLSTATE '70100' SET MYSQL_ERRNO = 1317, MESSAGE_TEXT = 'Query execution was interrupted';
        END IF;
        IF v_mode = 'deadlock' THEN
            SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock found when trying to get lock (injected)';
        END IF;
        IF v_mode = 'error' THEN
            SET o_code = v_code;
        END IF;
    END IF;
END$$

CREATE PROCEDURE his_patient(IN p_patient_id VARCHAR(64))
BEGIN
    IF NOT EXISTS (SELECT 1 FROM patients WHERE patient_id = p_patient_id) THEN
        CALL his_fail(1001, CONCAT('患者不存在 (patient ', IFNULL(p_patient_id, ''), ' not found)'));
    END IF;
END$$

CREATE PROCEDURE his_check_paid(IN p_amount_fen BIGINT, IN p_pay_mode VARCHAR(10), IN p_channel_trade_no VARCHAR(64),
                                IN p_pay_time DATETIME)
BEGIN
    IF p_amount_fen IS NULL OR p_amount_fen <= 0 OR p_amount_fen > 10000000000 THEN
        CALL his_fail(9001, CONCAT('金额无效 (amount must be positive, got ', IFNULL(p_amount_fen, 'NULL'), ' fen)'));
    END IF;
    IF p_pay_mode IS NULL OR p_pay_mode NOT IN ('WX', 'ZFB', 'YL') THEN
        CALL his_fail(9001, CONCAT('支付方式无效 (PayMode must be one of WX, ZFB, YL, got ', QUOTE(p_pay_mode), ')'));
    END IF;
    IF IFNULL(p_channel_trade_no, '') = '' THEN
        CALL his_fail(9001, '缺少渠道交易号 (ChannelTradeNo is required)');
    END IF;
    IF p_pay_time IS NULL THEN
        CALL his_fail(9001, '缺少必填项 (PayTime is required)');
    END IF;
END$$

CREATE PROCEDURE his_check_bill(IN p_patient_id VARCHAR(64), IN p_bill_no VARCHAR(64), OUT o_amount_fen BIGINT)
BEGIN
    DECLARE v_patient VARCHAR(64);
    DECLARE v_status VARCHAR(10);
    SET o_amount_fen = NULL;
    SELECT patient_id, status, amount_fen INTO v_patient, v_status, o_amount_fen
    FROM bills WHERE bill_no = p_bill_no FOR UPDATE;
    IF v_patient IS NULL OR v_patient <> p_patient_id THEN
        CALL his_fail(2001, CONCAT('缴费单不存在 (bill ', IFNULL(p_bill_no, ''), ' unknown for patient ', p_patient_id, ')'));
    END IF;
    IF v_status = 'paid' THEN
        CALL his_fail(2002, CONCAT('缴费单已缴费 (bill ', p_bill_no, ' already paid)'));
    END IF;
END$$

CREATE PROCEDURE his_insert_trade(
    IN p_kind VARCHAR(20), IN p_prefix CHAR(2), IN p_trade_no VARCHAR(64), IN p_patient_id VARCHAR(64),
    IN p_amount_fen BIGINT, IN p_pay_mode VARCHAR(10), IN p_channel_trade_no VARCHAR(64), IN p_pay_time DATETIME,
    OUT o_trade_id BIGINT, OUT o_receipt_no VARCHAR(32))
BEGIN
    DECLARE v_now DATETIME DEFAULT his_now();
    INSERT INTO trades (trade_no, kind, patient_id, amount_fen, pay_mode, channel_trade_no, pay_time, recorded_at)
    VALUES (p_trade_no, p_kind, p_patient_id, p_amount_fen, p_pay_mode, p_channel_trade_no, p_pay_time, v_now);
    SET o_trade_id = LAST_INSERT_ID();
    SET o_receipt_no = CONCAT(p_prefix, DATE_FORMAT(v_now, '%Y%m%d'), LPAD(o_trade_id, 6, '0'));
    UPDATE trades SET receipt_no = o_receipt_no WHERE id = o_trade_id;
END$$

CREATE PROCEDURE his_c_query_patient(IN p_card_no VARCHAR(64), IN p_id_card_no VARCHAR(18), IN p_phone VARCHAR(20),
                                     OUT o_patient_id VARCHAR(64))
BEGIN
    SET o_patient_id = NULL;
    IF IFNULL(p_card_no, '') <> '' THEN
        SELECT patient_id INTO o_patient_id FROM patients WHERE card_no = p_card_no ORDER BY patient_id LIMIT 1;
    ELSEIF IFNULL(p_id_card_no, '') <> '' THEN
        SELECT patient_id INTO o_patient_id FROM patients WHERE id_card_no = p_id_card_no ORDER BY patient_id LIMIT 1;
    ELSEIF IFNULL(p_phone, '') <> '' THEN
        SELECT patient_id INTO o_patient_id FROM patients WHERE phone = p_phone ORDER BY patient_id LIMIT 1;
    ELSE
        CALL his_fail(9001, '请提供卡号、身份证号或手机号之一 (give CardNo, IdCardNo or Phone)');
    END IF;
    IF o_patient_id IS NULL THEN
        CALL his_fail(1001, '患者不存在 (patient not found)');
    END IF;
END$$

CREATE PROCEDURE his_c_lock(IN p_trade_no VARCHAR(64), IN p_patient_id VARCHAR(64), IN p_schedule_id VARCHAR(64),
                            OUT o_lock_id VARCHAR(32), OUT o_amount_fen BIGINT, OUT o_expire_time DATETIME)
BEGIN
    DECLARE v_now DATETIME DEFAULT his_now();
    DECLARE v_free INT;
    CALL his_patient(p_patient_id);
    SELECT fee_fen, capacity - booked INTO o_amount_fen, v_free FROM schedules WHERE schedule_id = p_schedule_id FOR UPDATE;
    IF o_amount_fen IS NULL THEN
        CALL his_fail(1002, CONCAT('排班不存在 (schedule ', IFNULL(p_schedule_id, ''), ' unknown)'));
    END IF;
    SET v_free = v_free - (SELECT COUNT(*) FROM locks WHERE schedule_id = p_schedule_id AND status = 'locked' AND expires_at > v_now);
    IF v_free <= 0 THEN
        CALL his_fail(1002, CONCAT('号源已满 (schedule ', p_schedule_id, ' is full)'));
    END IF;
    SET o_expire_time = v_now + INTERVAL 15 MINUTE;
    INSERT INTO locks (trade_no, patient_id, schedule_id, amount_fen, status, created_at, expires_at)
    VALUES (p_trade_no, p_patient_id, p_schedule_id, o_amount_fen, 'locked', v_now, o_expire_time);
    SET o_lock_id = CONCAT('LK', LPAD(LAST_INSERT_ID(), 8, '0'));
    UPDATE locks SET lock_id = o_lock_id WHERE id = LAST_INSERT_ID();
    CALL his_applied('LockRegistration', p_trade_no, NULL);
END$$

CREATE PROCEDURE his_c_unlock(IN p_trade_no VARCHAR(64), IN p_lock_id VARCHAR(32))
BEGIN
    DECLARE v_trade VARCHAR(64);
    DECLARE v_status VARCHAR(10);
    SELECT trade_no, status INTO v_trade, v_status FROM locks WHERE lock_id = p_lock_id FOR UPDATE;
    IF v_trade IS NULL OR v_trade <> p_trade_no THEN
        CALL his_fail(1003, CONCAT('锁号不存在 (lock ', IFNULL(p_lock_id, ''), ' unknown for trade ', IFNULL(p_trade_no, ''), ')'));
    END IF;
    IF v_status = 'used' THEN
        CALL his_fail(1003, CONCAT('已挂号，不能解锁 (lock ', p_lock_id, ' already used by a registration)'));
    END IF;
    UPDATE locks SET status = 'unlocked' WHERE lock_id = p_lock_id;
    CALL his_applied('UnlockRegistration', p_trade_no, NULL);
END$$

CREATE PROCEDURE his_c_commit_registration(
    IN p_trade_no VARCHAR(64), IN p_patient_id VARCHAR(64), IN p_schedule_id VARCHAR(64), IN p_lock_id VARCHAR(32),
    IN p_amount_fen BIGINT, IN p_pay_mode VARCHAR(10), IN p_channel_trade_no VARCHAR(64), IN p_pay_time DATETIME,
    OUT o_receipt_no VARCHAR(32), OUT o_visit_no VARCHAR(32))
BEGIN
    DECLARE v_now DATETIME DEFAULT his_now();
    DECLARE v_fee BIGINT;
    DECLARE v_free INT;
    DECLARE v_lock_trade, v_lock_patient, v_lock_schedule VARCHAR(64);
    DECLARE v_lock_status VARCHAR(10);
    DECLARE v_lock_expires DATETIME;
    DECLARE v_trade_id BIGINT;
    CALL his_check_paid(p_amount_fen, p_pay_mode, p_channel_trade_no, p_pay_time);
    CALL his_patient(p_patient_id);
    SELECT fee_fen, capacity - booked INTO v_fee, v_free FROM schedules WHERE schedule_id = p_schedule_id FOR UPDATE;
    IF v_fee IS NULL THEN
        CALL his_fail(1002, CONCAT('排班不存在 (schedule ', IFNULL(p_schedule_id, ''), ' unknown)'));
    END IF;
    IF IFNULL(p_lock_id, '') <> '' THEN
        SELECT trade_no, patient_id, schedule_id, status, expires_at
        INTO v_lock_trade, v_lock_patient, v_lock_schedule, v_lock_status, v_lock_expires
        FROM locks WHERE lock_id = p_lock_id FOR UPDATE;
        IF v_lock_trade IS NULL OR v_lock_patient <> p_patient_id OR v_lock_schedule <> p_schedule_id
           OR (v_lock_status = 'used' AND v_lock_trade <> p_trade_no) THEN
            CALL his_fail(1003, CONCAT('锁号不存在 (lock ', p_lock_id, ' unknown)'));
        END IF;
        IF v_lock_status = 'unlocked' OR (v_lock_status = 'locked' AND v_lock_expires <= v_now) THEN
            CALL his_fail(1003, CONCAT('锁号已失效 (lock ', p_lock_id, ' expired or released)'));
        END IF;
    ELSEIF v_free - (SELECT COUNT(*) FROM locks WHERE schedule_id = p_schedule_id AND status = 'locked' AND expires_at > v_now) <= 0 THEN
        CALL his_fail(1002, CONCAT('号源已满 (schedule ', p_schedule_id, ' is full)'));
    END IF;
    IF p_amount_fen <> v_fee THEN
        CALL his_fail(2003, CONCAT('金额不符 (amount ', p_amount_fen, ' fen does not match the fee ', v_fee, ' fen)'));
    END IF;
    IF IFNULL(p_lock_id, '') <> '' THEN
        UPDATE locks SET status = 'used' WHERE lock_id = p_lock_id;
    END IF;
    UPDATE schedules SET booked = booked + 1 WHERE schedule_id = p_schedule_id;
    CALL his_insert_trade('registration', 'GH', p_trade_no, p_patient_id, p_amount_fen, p_pay_mode, p_channel_trade_no,
                          p_pay_time, v_trade_id, o_receipt_no);
    SET o_visit_no = CONCAT('MZ', LPAD(v_trade_id, 8, '0'));
    UPDATE trades SET schedule_id = p_schedule_id, lock_id = NULLIF(p_lock_id, ''), visit_no = o_visit_no WHERE id = v_trade_id;
    CALL his_applied('CommitRegistration', p_trade_no, NULL);
END$$

CREATE PROCEDURE his_c_charge_open(IN p_trade_no VARCHAR(64), IN p_patient_id VARCHAR(64), OUT o_session_id BIGINT)
BEGIN
    IF IFNULL(p_trade_no, '') = '' THEN
        CALL his_fail(9001, '缺少必填项 (TradeNo is required)');
    END IF;
    CALL his_patient(p_patient_id);
    INSERT INTO his_charge_sessions (trade_no, patient_id, opened_at) VALUES (p_trade_no, p_patient_id, his_now());
    SET o_session_id = LAST_INSERT_ID();
END$$

CREATE PROCEDURE his_c_charge_add_line(IN p_session_id BIGINT, IN p_bill_no VARCHAR(64), OUT o_line_no INT,
                                       OUT o_amount_fen BIGINT)
BEGIN
    DECLARE v_patient VARCHAR(64);
    SELECT patient_id INTO v_patient FROM his_charge_sessions
    WHERE session_id = p_session_id AND submitted_trade_id IS NULL FOR UPDATE;
    IF v_patient IS NULL THEN
        CALL his_fail(9001, CONCAT('收费会话无效 (charge session ', IFNULL(p_session_id, 'NULL'), ' unknown or already submitted)'));
    END IF;
    CALL his_check_bill(v_patient, p_bill_no, o_amount_fen);
    IF EXISTS (SELECT 1 FROM his_charge_lines WHERE session_id = p_session_id AND bill_no = p_bill_no) THEN
        CALL his_fail(9001, '缴费单号为空或重复 (BillNos must be non-empty and distinct)');
    END IF;
    SELECT IFNULL(MAX(line_no), 0) + 1 INTO o_line_no FROM his_charge_lines WHERE session_id = p_session_id;
    INSERT INTO his_charge_lines VALUES (p_session_id, o_line_no, p_bill_no);
END$$

CREATE PROCEDURE his_c_charge_submit(
    IN p_session_id BIGINT, IN p_amount_fen BIGINT, IN p_pay_mode VARCHAR(10), IN p_channel_trade_no VARCHAR(64),
    IN p_pay_time DATETIME, OUT o_receipt_no VARCHAR(32))
BEGIN
    DECLARE v_trade_no, v_patient VARCHAR(64);
    DECLARE v_total BIGINT;
    DECLARE v_lines INT;
    DECLARE v_unpayable INT;
    DECLARE v_trade_id BIGINT;
    CALL his_check_paid(p_amount_fen, p_pay_mode, p_channel_trade_no, p_pay_time);
    SELECT trade_no, patient_id INTO v_trade_no, v_patient FROM his_charge_sessions
    WHERE session_id = p_session_id AND submitted_trade_id IS NULL FOR UPDATE;
    IF v_trade_no IS NULL THEN
        CALL his_fail(9001, CONCAT('收费会话无效 (charge session ', IFNULL(p_session_id, 'NULL'), ' unknown or already submitted)'));
    END IF;
    SELECT COUNT(*), IFNULL(SUM(b.amount_fen), 0), SUM(b.status <> 'unpaid' OR b.patient_id <> v_patient)
    INTO v_lines, v_total, v_unpayable
    FROM his_charge_lines l JOIN bills b ON b.bill_no = l.bill_no WHERE l.session_id = p_session_id;
    IF v_lines = 0 THEN
        CALL his_fail(9001, '缴费单号为空或重复 (BillNos must be non-empty and distinct)');
    END IF;
    IF v_unpayable > 0 THEN
        CALL his_fail(2002, '缴费单已缴费 (a bill of the session is already paid)');
    END IF;
    IF p_amount_fen <> v_total THEN
        CALL his_fail(2003, CONCAT('金额不符 (amount ', p_amount_fen, ' fen, bills total ', v_total, ' fen)'));
    END IF;
    CALL his_insert_trade('charge', 'SF', v_trade_no, v_patient, p_amount_fen, p_pay_mode, p_channel_trade_no,
                          p_pay_time, v_trade_id, o_receipt_no);
    UPDATE trades SET bill_nos = (SELECT GROUP_CONCAT(bill_no ORDER BY line_no SEPARATOR ',') FROM his_charge_lines
                                  WHERE session_id = p_session_id) WHERE id = v_trade_id;
    UPDATE bills b JOIN his_charge_lines l ON l.bill_no = b.bill_no AND l.session_id = p_session_id
    SET b.status = 'paid', b.trade_id = v_trade_id;
    UPDATE his_charge_sessions SET submitted_trade_id = v_trade_id WHERE session_id = p_session_id;
    CALL his_applied('CommitCharge', v_trade_no, NULL);
END$$

CREATE PROCEDURE his_c_commit_prepay(
    IN p_trade_no VARCHAR(64), IN p_patient_id VARCHAR(64), IN p_inpatient_no VARCHAR(64), IN p_amount_fen BIGINT,
    IN p_pay_mode VARCHAR(10), IN p_channel_trade_no VARCHAR(64), IN p_pay_time DATETIME,
    OUT o_receipt_no VARCHAR(32), OUT o_balance_fen BIGINT)
BEGIN
    DECLARE v_owner VARCHAR(64);
    DECLARE v_balance BIGINT;
    DECLARE v_trade_id BIGINT;
    CALL his_check_paid(p_amount_fen, p_pay_mode, p_channel_trade_no, p_pay_time);
    CALL his_patient(p_patient_id);
    SELECT patient_id, balance_fen INTO v_owner, v_balance FROM inpatients WHERE inpatient_no = p_inpatient_no FOR UPDATE;
    IF v_owner IS NULL OR v_owner <> p_patient_id THEN
        CALL his_fail(1001, CONCAT('住院记录不存在 (inpatient ', IFNULL(p_inpatient_no, ''), ' unknown for patient ', p_patient_id, ')'));
    END IF;
    UPDATE inpatients SET balance_fen = balance_fen + p_amount_fen WHERE inpatient_no = p_inpatient_no;
    CALL his_insert_trade('prepay', 'YJ', p_trade_no, p_patient_id, p_amount_fen, p_pay_mode, p_channel_trade_no,
                          p_pay_time, v_trade_id, o_receipt_no);
    UPDATE trades SET inpatient_no = p_inpatient_no WHERE id = v_trade_id;
    SET o_balance_fen = v_balance + p_amount_fen;
    CALL his_applied('CommitPrepay', p_trade_no, NULL);
END$$

-- A refund application takes back the deposit balance at once, and, once the trade's live applications cover
-- all of it, the registration slot (退号) or the paid bills (退费); a cancelled application gives all of it back.
-- This releases the slot or the bills when the trade becomes fully refunded and takes them back when it stops
-- being so; a slot given away meanwhile cannot be taken back (1002).
CREATE PROCEDURE his_refund_total_changed(IN p_trade_id BIGINT, IN p_before_fen BIGINT, IN p_after_fen BIGINT)
BEGIN
    DECLARE v_kind VARCHAR(20);
    DECLARE v_amount BIGINT;
    DECLARE v_schedule VARCHAR(64);
    DECLARE v_receipt VARCHAR(32);
    DECLARE v_free INT;
    SELECT kind, amount_fen, schedule_id, receipt_no INTO v_kind, v_amount, v_schedule, v_receipt
    FROM trades WHERE id = p_trade_id;
    IF (p_before_fen >= v_amount) <> (p_after_fen >= v_amount) THEN
        IF v_kind = 'registration' THEN
            IF p_after_fen >= v_amount THEN
                UPDATE schedules SET booked = booked - 1 WHERE schedule_id = v_schedule;
            ELSE
                SELECT capacity - booked INTO v_free FROM schedules WHERE schedule_id = v_schedule FOR UPDATE;
                SET v_free = v_free - (SELECT COUNT(*) FROM locks
                    WHERE schedule_id = v_schedule AND status = 'locked' AND expires_at > his_now());
                IF v_free <= 0 THEN
                    CALL his_fail(1002, CONCAT('号源已满，无法恢复挂号 (schedule ', v_schedule, ' is full: the registration ',
                        v_receipt, ' cannot be restored)'));
                END IF;
                UPDATE schedules SET booked = booked + 1 WHERE schedule_id = v_schedule;
            END IF;
        ELSEIF v_kind = 'charge' THEN
            UPDATE bills SET status = IF(p_after_fen >= v_amount, 'refunded', 'paid') WHERE trade_id = p_trade_id;
        END IF;
    END IF;
END$$

CREATE PROCEDURE his_c_apply_refund(
    IN p_trade_no VARCHAR(64), IN p_refund_no VARCHAR(64), IN p_amount_fen BIGINT, IN p_reason VARCHAR(200),
    OUT o_refundable_fen BIGINT, OUT o_his_refund_id VARCHAR(32))
BEGIN
    DECLARE v_existing_trade VARCHAR(64);
    DECLARE v_cancelled_at DATETIME;
    DECLARE v_trade_id, v_paid, v_refunded, v_balance BIGINT;
    DECLARE v_kind VARCHAR(20);
    DECLARE v_inpatient VARCHAR(64);
    IF p_amount_fen IS NULL OR p_amount_fen <= 0 OR p_amount_fen > 10000000000 THEN
        CALL his_fail(9001, CONCAT('金额无效 (refund amount must be positive fen, got ', IFNULL(p_amount_fen, 'NULL'), ')'));
    END IF;
    IF IFNULL(p_refund_no, '') = '' THEN
        CALL his_fail(9001, '缺少退款单号 (RefundNo is required)');
    END IF;
    SELECT trade_no, refundable_fen, his_refund_id, cancelled_at
    INTO v_existing_trade, o_refundable_fen, o_his_refund_id, v_cancelled_at
    FROM refunds WHERE refund_no = p_refund_no;
    IF v_existing_trade IS NOT NULL THEN
        IF v_existing_trade <> p_trade_no THEN
            CALL his_fail(9001, CONCAT('退款单号已用于其他交易 (refund ', p_refund_no, ' belongs to another trade)'));
        END IF;
        IF v_cancelled_at IS NOT NULL THEN
            CALL his_fail(3005, CONCAT('退款申请已撤销 (refund ', p_refund_no, ' was cancelled at ', his_time_text(v_cancelled_at),
                '; a new refund needs a new refund number)'));
        END IF;
        CALL his_applied('ApplyRefund', p_trade_no, p_refund_no);
    ELSE
        SELECT id, amount_fen, kind, inpatient_no INTO v_trade_id, v_paid, v_kind, v_inpatient
        FROM trades WHERE trade_no = p_trade_no ORDER BY id LIMIT 1 FOR UPDATE;
        IF v_trade_id IS NULL THEN
            CALL his_fail(3001, CONCAT('交易不存在 (trade ', IFNULL(p_trade_no, ''), ' unknown)'));
        END IF;
        SELECT IFNULL(SUM(amount_fen), 0) INTO v_refunded FROM refunds WHERE trade_no = p_trade_no AND cancelled_at IS NULL;
        SET o_refundable_fen = v_paid - v_refunded;
        IF v_kind = 'prepay' THEN
            SELECT balance_fen INTO v_balance FROM inpatients WHERE inpatient_no = v_inpatient FOR UPDATE;
            SET o_refundable_fen = LEAST(o_refundable_fen, v_balance);
        END IF;
        IF p_amount_fen > o_refundable_fen THEN
            CALL his_fail(3002, CONCAT('超出可退金额 (refund ', p_amount_fen, ' fen exceeds refundable ', o_refundable_fen, ' fen)'));
        END IF;
        IF v_kind = 'prepay' THEN
            UPDATE inpatients SET balance_fen = balance_fen - p_amount_fen WHERE inpatient_no = v_inpatient;
        END IF;
        CALL his_refund_total_changed(v_trade_id, v_refunded, v_refunded + p_amount_fen);
        INSERT INTO refunds (refund_no, trade_no, trade_id, amount_fen, refundable_fen, reason, applied_at)
        VALUES (p_refund_no, p_trade_no, v_trade_id, p_amount_fen, o_refundable_fen, p_reason, his_now());
        SET o_his_refund_id = CONCAT('HR', LPAD(LAST_INSERT_ID(), 8, '0'));
        UPDATE refunds SET his_refund_id = o_his_refund_id WHERE id = LAST_INSERT_ID();
        CALL his_applied('ApplyRefund', p_trade_no, p_refund_no);
    END IF;
END$$

CREATE PROCEDURE his_c_writeback_refund(
    IN p_trade_no VARCHAR(64), IN p_refund_no VARCHAR(64), IN p_amount_fen BIGINT, IN p_channel_refund_no VARCHAR(64),
    IN p_refund_time DATETIME, OUT o_receipt_no VARCHAR(32))
BEGIN
    DECLARE v_id, v_amount BIGINT;
    DECLARE v_trade VARCHAR(64);
    DECLARE v_cancelled_at DATETIME;
    DECLARE v_now DATETIME DEFAULT his_now();
    IF IFNULL(p_channel_refund_no, '') = '' THEN
        CALL his_fail(9001, '缺少渠道退款单号 (ChannelRefundNo is required)');
    END IF;
    SELECT id, trade_no, amount_fen, writeback_receipt_no, cancelled_at INTO v_id, v_trade, v_amount, o_receipt_no, v_cancelled_at
    FROM refunds WHERE refund_no = p_refund_no FOR UPDATE;
    IF v_id IS NULL OR v_trade <> p_trade_no THEN
        CALL his_fail(3003, CONCAT('退款申请不存在 (refund ', IFNULL(p_refund_no, ''), ' unknown for trade ', IFNULL(p_trade_no, ''), ')'));
    END IF;
    IF v_cancelled_at IS NOT NULL THEN
        CALL his_fail(3005, CONCAT('退款申请已撤销 (refund ', p_refund_no, ' was cancelled at ', his_time_text(v_cancelled_at),
            '; it cannot be written back)'));
    END IF;
    IF p_amount_fen IS NULL OR p_amount_fen <> v_amount THEN
        CALL his_fail(2003, CONCAT('金额不符 (amount ', IFNULL(p_amount_fen, 'NULL'), ' fen, refund applied for ', v_amount, ' fen)'));
    END IF;
    IF o_receipt_no IS NULL THEN
        SET o_receipt_no = CONCAT('TF', DATE_FORMAT(v_now, '%Y%m%d'), LPAD(v_id, 6, '0'));
        UPDATE refunds SET channel_refund_no = p_channel_refund_no, refund_time = p_refund_time,
            writeback_receipt_no = o_receipt_no, written_back_at = v_now WHERE id = v_id;
    END IF;
    CALL his_applied('WritebackRefund', p_trade_no, p_refund_no);
END$$

CREATE PROCEDURE his_c_cancel_refund(
    IN p_trade_no VARCHAR(64), IN p_refund_no VARCHAR(64), IN p_reason VARCHAR(200),
    OUT o_receipt_no VARCHAR(32), OUT o_amount_fen BIGINT)
BEGIN
    DECLARE v_id, v_trade_id, v_live BIGINT;
    DECLARE v_trade VARCHAR(64);
    DECLARE v_writeback VARCHAR(32);
    DECLARE v_written_back_at DATETIME;
    DECLARE v_channel_refund VARCHAR(64);
    DECLARE v_kind VARCHAR(20);
    DECLARE v_inpatient VARCHAR(64);
    DECLARE v_now DATETIME DEFAULT his_now();
    SELECT id, trade_no, trade_id, amount_fen, writeback_receipt_no, written_back_at, channel_refund_no, cancel_receipt_no
    INTO v_id, v_trade, v_trade_id, o_amount_fen, v_writeback, v_written_back_at, v_channel_refund, o_receipt_no
    FROM refunds WHERE refund_no = p_refund_no FOR UPDATE;
    IF v_id IS NULL OR v_trade <> p_trade_no THEN
        CALL his_fail(3003, CONCAT('退款申请不存在 (refund ', IFNULL(p_refund_no, ''), ' unknown for trade ', IFNULL(p_trade_no, ''), ')'));
    END IF;
    IF o_receipt_no IS NULL THEN
        IF v_writeback IS NOT NULL THEN
            CALL his_fail(3004, CONCAT('退款已完成，不能撤销 (refund ', p_refund_no, ' was written back at ',
                his_time_text(v_written_back_at), ' with channel refund ', v_channel_refund, ': the money went back)'));
        END IF;
        SELECT kind, inpatient_no INTO v_kind, v_inpatient FROM trades WHERE id = v_trade_id FOR UPDATE;
        SELECT IFNULL(SUM(amount_fen), 0) INTO v_live FROM refunds WHERE trade_no = p_trade_no AND cancelled_at IS NULL;
        CALL his_refund_total_changed(v_trade_id, v_live, v_live - o_amount_fen);
        IF v_kind = 'prepay' THEN
            UPDATE inpatients SET balance_fen = balance_fen + o_amount_fen WHERE inpatient_no = v_inpatient;
        END IF;
        SET o_receipt_no = CONCAT('CX', DATE_FORMAT(v_now, '%Y%m%d'), LPAD(v_id, 6, '0'));
        UPDATE refunds SET cancel_receipt_no = o_receipt_no, cancel_reason = p_reason, cancelled_at = v_now WHERE id = v_id;
    END IF;
    CALL his_applied('CancelRefund', p_trade_no, p_refund_no);
END$$

CREATE PROCEDURE his_c_check_trade(
    IN p_trade_no VARCHAR(64), IN p_operation VARCHAR(64), IN p_refund_no VARCHAR(64),
    OUT o_found INT, OUT o_receipt_no VARCHAR(32), OUT o_amount_fen BIGINT, OUT o_status VARCHAR(20))
BEGIN
    DECLARE v_op VARCHAR(64);
    DECLARE v_id, v_refunded BIGINT;
    DECLARE v_expires DATETIME;
    DECLARE v_writeback VARCHAR(32);
    DECLARE v_cancel VARCHAR(32);
    DECLARE v_his_refund VARCHAR(32);
    DECLARE v_refundable BIGINT;
    SET v_op = CASE p_operation
        WHEN 'LockRegistration' THEN 'registration.lock' WHEN 'UnlockRegistration' THEN 'registration.unlock'
        WHEN 'CommitRegistration' THEN 'registration.commit' WHEN 'CommitCharge' THEN 'charge.commit'
        WHEN 'CommitPrepay' THEN 'prepay.commit' WHEN 'ApplyRefund' THEN 'refund.apply'
        WHEN 'WritebackRefund' THEN 'refund.writeback' WHEN 'CancelRefund' THEN 'refund.cancel' ELSE p_operation END;
    SET o_found = 0, o_receipt_no = NULL, o_amount_fen = NULL, o_status = NULL;
    IF v_op IN ('registration.commit', 'charge.commit', 'prepay.commit') THEN
        SELECT id, receipt_no, amount_fen INTO v_id, o_receipt_no, o_amount_fen FROM trades
        WHERE trade_no = p_trade_no AND kind = SUBSTRING_INDEX(v_op, '.', 1) ORDER BY id LIMIT 1;
        IF v_id IS NOT NULL THEN
            SELECT IFNULL(SUM(amount_fen), 0) INTO v_refunded FROM refunds WHERE trade_id = v_id AND cancelled_at IS NULL;
            SET o_found = 1, o_status = CASE WHEN v_refunded = 0 THEN 'paid' WHEN v_refunded >= o_amount_fen THEN 'refunded'
                ELSE 'partial' END;
        END IF;
    ELSEIF v_op IN ('registration.lock', 'registration.unlock') THEN
        SELECT id, lock_id, amount_fen, status, expires_at INTO v_id, o_receipt_no, o_amount_fen, o_status, v_expires
        FROM locks WHERE trade_no = p_trade_no AND (v_op = 'registration.lock' OR status = 'unlocked') ORDER BY id LIMIT 1;
        IF v_id IS NOT NULL THEN
            SET o_found = 1;
            IF o_status = 'locked' AND v_expires <= his_now() THEN
                SET o_status = 'expired';
            END IF;
        END IF;
    ELSEIF v_op IN ('refund.apply', 'refund.writeback', 'refund.cancel') THEN
        IF IFNULL(p_refund_no, '') = '' THEN
            CALL his_fail(9001, CONCAT('缺少退款单号 (RefundNo is required to check ', v_op, ')'));
        END IF;
        SELECT id, his_refund_id, refundable_fen, amount_fen, writeback_receipt_no, cancel_receipt_no
        INTO v_id, v_his_refund, v_refundable, v_refunded, v_writeback, v_cancel
        FROM refunds WHERE refund_no = p_refund_no AND trade_no = p_trade_no;
        IF v_id IS NOT NULL THEN
            SET o_status = CASE WHEN v_cancel IS NOT NULL THEN 'cancelled' WHEN v_writeback IS NOT NULL THEN 'written_back'
                ELSE 'applied' END;
            IF v_op = 'refund.apply' THEN
                SET o_found = 1, o_receipt_no = v_his_refund, o_amount_fen = v_refundable;
            ELSEIF v_op = 'refund.writeback' AND v_writeback IS NOT NULL THEN
                SET o_found = 1, o_receipt_no = v_writeback, o_amount_fen = v_refunded;
            ELSEIF v_op = 'refund.cancel' AND v_cancel IS NOT NULL THEN
                SET o_found = 1, o_receipt_no = v_cancel, o_amount_fen = v_refunded;
            ELSE
                SET o_status = NULL;
            END IF;
        END IF;
    ELSE
        CALL his_fail(9001, CONCAT('不支持的业务类型 (Operation ', QUOTE(p_operation), ' is not a write the HIS records)'));
    END IF;
END$$

DELIMITER ;
