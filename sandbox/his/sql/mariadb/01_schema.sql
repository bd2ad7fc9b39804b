-- The sandbox HIS's books for MariaDB: the same tables and seed as sandbox/his/state.py (SQLite).
-- Money is BIGINT fen in the tables; the XML carries yuan text, the charge procedures take DECIMAL(12,2) yuan.
-- Re-running this file drops everything the sandbox owns and starts from the seed.
-- Runs with the stock client too: mariadb his < 01_schema.sql

DROP PROCEDURE IF EXISTS his_fail;
DROP PROCEDURE IF EXISTS his_applied;
DROP PROCEDURE IF EXISTS his_fault;
DROP PROCEDURE IF EXISTS his_patient;
DROP PROCEDURE IF EXISTS his_check_paid;
DROP PROCEDURE IF EXISTS his_check_bill;
DROP PROCEDURE IF EXISTS his_insert_trade;
DROP PROCEDURE IF EXISTS his_c_query_patient;
DROP PROCEDURE IF EXISTS his_c_lock;
DROP PROCEDURE IF EXISTS his_c_unlock;
DROP PROCEDURE IF EXISTS his_c_commit_registration;
DROP PROCEDURE IF EXISTS his_c_charge_open;
DROP PROCEDURE IF EXISTS his_c_charge_add_line;
DROP PROCEDURE IF EXISTS his_c_charge_submit;
DROP PROCEDURE IF EXISTS his_c_commit_prepay;
DROP PROCEDURE IF EXISTS his_c_apply_refund;
DROP PROCEDURE IF EXISTS his_c_writeback_refund;
DROP PROCEDURE IF EXISTS his_c_cancel_refund;
DROP PROCEDURE IF EXISTS his_refund_total_changed;
DROP PROCEDURE IF EXISTS his_c_check_trade;
DROP PROCEDURE IF EXISTS his_charge_open;
DROP PROCEDURE IF EXISTS his_charge_add_line;
DROP PROCEDURE IF EXISTS his_charge_submit;
DROP PROCEDURE IF EXISTS his_dispatch;
DROP FUNCTION IF EXISTS his_now;
DROP FUNCTION IF EXISTS his_yuan;
DROP FUNCTION IF EXISTS his_xe;
DROP FUNCTION IF EXISTS his_xu;
DROP FUNCTION IF EXISTS his_el;
DROP FUNCTION IF EXISTS his_x;
DROP FUNCTION IF EXISTS his_xr;
DROP FUNCTION IF EXISTS his_xfen;
DROP FUNCTION IF EXISTS his_xtime;
DROP FUNCTION IF EXISTS his_xdate;
DROP FUNCTION IF EXISTS his_xint;
DROP FUNCTION IF EXISTS his_time_text;
DROP FUNCTION IF EXISTS his_fen;
DROP TABLE IF EXISTS his_charge_lines, his_charge_sessions, applications, refunds, trades, locks, inpatients, bills,
    schedules, patients, his_faults;

CREATE TABLE patients (
    patient_id VARCHAR(64) PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    gender CHAR(1) NOT NULL CHECK (gender IN ('M', 'F', 'U')),
    birth_date DATE,
    card_no VARCHAR(64) UNIQUE,
    id_card_no VARCHAR(18) UNIQUE,
    phone VARCHAR(20)
) ENGINE = InnoDB;
CREATE TABLE schedules (
    schedule_id VARCHAR(64) PRIMARY KEY,
    dept_name VARCHAR(100) NOT NULL,
    doctor_name VARCHAR(100),
    visit_date DATE,
    period VARCHAR(20),
    fee_fen BIGINT NOT NULL CHECK (fee_fen >= 0),
    capacity INT NOT NULL,
    booked INT NOT NULL DEFAULT 0
) ENGINE = InnoDB;
CREATE TABLE bills (
    bill_no VARCHAR(64) PRIMARY KEY,
    patient_id VARCHAR(64) NOT NULL REFERENCES patients (patient_id),
    dept_name VARCHAR(100),
    amount_fen BIGINT NOT NULL CHECK (amount_fen >= 0),
    created_at DATETIME NOT NULL,
    status VARCHAR(10) NOT NULL DEFAULT 'unpaid' CHECK (status IN ('unpaid', 'paid', 'refunded')),
    trade_id BIGINT
) ENGINE = InnoDB;
CREATE TABLE inpatients (
    inpatient_no VARCHAR(64) PRIMARY KEY,
    patient_id VARCHAR(64) NOT NULL REFERENCES patients (patient_id),
    ward VARCHAR(100),
    balance_fen BIGINT NOT NULL DEFAULT 0
) ENGINE = InnoDB;
CREATE TABLE locks (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    lock_id VARCHAR(32) UNIQUE,
    trade_no VARCHAR(64) NOT NULL,
    patient_id VARCHAR(64) NOT NULL,
    schedule_id VARCHAR(64) NOT NULL,
    amount_fen BIGINT NOT NULL,
    status VARCHAR(10) NOT NULL CHECK (status IN ('locked', 'unlocked', 'used')),
    created_at DATETIME NOT NULL,
    expires_at DATETIME NOT NULL,
    KEY locks_trade (trade_no)
) ENGINE = InnoDB;
CREATE TABLE trades (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    trade_no VARCHAR(64) NOT NULL,
    kind VARCHAR(20) NOT NULL CHECK (kind IN ('registration', 'charge', 'prepay')),
    receipt_no VARCHAR(32) UNIQUE,
    patient_id VARCHAR(64) NOT NULL,
    amount_fen BIGINT NOT NULL CHECK (amount_fen >= 0),
    pay_mode VARCHAR(10) NOT NULL,
    channel_trade_no VARCHAR(64) NOT NULL,
    pay_time DATETIME NOT NULL,
    recorded_at DATETIME NOT NULL,
    schedule_id VARCHAR(64),
    lock_id VARCHAR(32),
    visit_no VARCHAR(32),
    inpatient_no VARCHAR(64),
    bill_nos TEXT,
    KEY trades_trade_no (trade_no),
    KEY trades_recorded (recorded_at, id)
) ENGINE = InnoDB;
CREATE TABLE refunds (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    refund_no VARCHAR(64) NOT NULL UNIQUE,
    trade_no VARCHAR(64) NOT NULL,
    trade_id BIGINT NOT NULL REFERENCES trades (id),
    amount_fen BIGINT NOT NULL CHECK (amount_fen > 0),
    refundable_fen BIGINT NOT NULL,
    reason VARCHAR(200),
    his_refund_id VARCHAR(32) UNIQUE,
    applied_at DATETIME NOT NULL,
    channel_refund_no VARCHAR(64),
    refund_time DATETIME,
    writeback_receipt_no VARCHAR(32) UNIQUE,
    written_back_at DATETIME,
    cancel_receipt_no VARCHAR(32) UNIQUE,
    cancel_reason VARCHAR(200),
    cancelled_at DATETIME,
    KEY refunds_trade (trade_no),
    KEY refunds_applied (applied_at, id)
) ENGINE = InnoDB;
CREATE TABLE applications (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    operation VARCHAR(64) NOT NULL,
    trade_no VARCHAR(64),
    refund_no VARCHAR(64),
    applied_at DATETIME NOT NULL
) ENGINE = InnoDB;

-- The Winning-style charge: open a session, add bill lines, submit; meant to run in one transaction.
CREATE TABLE his_charge_sessions (
    session_id BIGINT AUTO_INCREMENT PRIMARY KEY,
    trade_no VARCHAR(64) NOT NULL,
    patient_id VARCHAR(64) NOT NULL,
    opened_at DATETIME NOT NULL,
    submitted_trade_id BIGINT
) ENGINE = InnoDB;
CREATE TABLE his_charge_lines (
    session_id BIGINT NOT NULL REFERENCES his_charge_sessions (session_id),
    line_no INT NOT NULL,
    bill_no VARCHAR(64) NOT NULL,
    PRIMARY KEY (session_id, line_no),
    UNIQUE KEY (session_id, bill_no)
) ENGINE = InnoDB;

-- Fault injection, consulted by every procedure (operation: the procedure name, the dispatcher's method, or '*').
-- mode: 'latency' (sleep sleep_ms, then work normally), 'error' (answer status F / ResultCode error_code,
-- nothing applied), 'deadlock' (SIGNAL SQLSTATE 40001). sleep_ms delays every mode. remaining: how many calls
-- the rule still takes (NULL: until deleted); a rule whose caller rolls back is not consumed: delete it when done.
CREATE TABLE his_faults (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    operation VARCHAR(64) NOT NULL,
    mode VARCHAR(10) NOT NULL CHECK (mode IN ('latency', 'error', 'deadlock')),
    sleep_ms INT NOT NULL DEFAULT 0,
    error_code VARCHAR(10) NOT NULL DEFAULT '9999',
    remaining INT,
    hits INT NOT NULL DEFAULT 0
) ENGINE = InnoDB;

INSERT INTO patients VALUES
    ('P0001', '张三', 'M', '1985-03-12', 'C0001', '110105198503120012', '13800000001'),
    ('P0002', '李四', 'F', '1990-07-08', 'C0002', '310115199007080028', '13800000002'),
    ('P0003', '王五', 'M', '1978-11-30', 'C0003', '440305197811300034', '13800000003'),
    ('P0004', '赵六', 'F', '2016-05-21', 'C0004', '510107201605210045', '13800000004');
INSERT INTO schedules (schedule_id, dept_name, doctor_name, visit_date, period, fee_fen, capacity) VALUES
    ('S001', '内科', '刘医生', DATE(CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', '+08:00')), '上午', 1000, 30),
    ('S002', '外科', '陈主任', DATE(CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', '+08:00')), '上午', 5000, 5),
    ('S003', '儿科', '周医生', DATE(CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', '+08:00')), '下午', 1500, 1);
INSERT INTO bills (bill_no, patient_id, dept_name, amount_fen, created_at) VALUES
    ('B0001', 'P0001', '内科', 1250, CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', '+08:00')),
    ('B0002', 'P0001', '检验科', 8600, CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', '+08:00')),
    ('B0003', 'P0002', '放射科', 26000, CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', '+08:00')),
    ('B0004', 'P0002', '药房', 4380, CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', '+08:00')),
    ('B0005', 'P0003', '内科', 2000, CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', '+08:00')),
    ('B0006', 'P0004', '儿科', 3550, CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', '+08:00'));
INSERT INTO inpatients VALUES ('Z0001', 'P0003', '心内科一病区', 200000);
