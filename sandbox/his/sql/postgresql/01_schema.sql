-- The sandbox HIS's books for PostgreSQL: the same tables and seed as sandbox/his/state.py (SQLite).
-- Money is BIGINT fen in the tables; the procedures take and return NUMERIC yuan, converted exactly.
-- Re-running this file drops everything the sandbox owns and starts from the seed.

DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT p.oid::regprocedure AS routine FROM pg_proc p
             WHERE p.proname LIKE 'his\_%' AND p.pronamespace = current_schema()::regnamespace LOOP
        EXECUTE 'DROP ROUTINE IF EXISTS ' || r.routine || ' CASCADE';
    END LOOP;
END $$;

DROP TABLE IF EXISTS his_charge_lines, his_charge_sessions, applications, refunds, trades, locks, inpatients, bills,
    schedules, patients, his_faults CASCADE;

CREATE TABLE patients (
    patient_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    gender TEXT NOT NULL CHECK (gender IN ('M', 'F', 'U')),
    birth_date DATE,
    card_no TEXT UNIQUE,
    id_card_no TEXT UNIQUE,
    phone TEXT
);
CREATE TABLE schedules (
    schedule_id TEXT PRIMARY KEY,
    dept_name TEXT NOT NULL,
    doctor_name TEXT,
    visit_date DATE,
    period TEXT,
    fee_fen BIGINT NOT NULL CHECK (fee_fen >= 0),
    capacity INTEGER NOT NULL,
    booked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE bills (
    bill_no TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients (patient_id),
    dept_name TEXT,
    amount_fen BIGINT NOT NULL CHECK (amount_fen >= 0),
    created_at TIMESTAMP(0) NOT NULL,
    status TEXT NOT NULL DEFAULT 'unpaid' CHECK (status IN ('unpaid', 'paid', 'refunded')),
    trade_id BIGINT
);
CREATE TABLE inpatients (
    inpatient_no TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients (patient_id),
    ward TEXT,
    balance_fen BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE locks (
    id BIGSERIAL PRIMARY KEY,
    lock_id TEXT UNIQUE,
    trade_no TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    schedule_id TEXT NOT NULL,
    amount_fen BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('locked', 'unlocked', 'used')),
    created_at TIMESTAMP(0) NOT NULL,
    expires_at TIMESTAMP(0) NOT NULL
);
CREATE INDEX locks_trade ON locks (trade_no);
CREATE TABLE trades (
    id BIGSERIAL PRIMARY KEY,
    trade_no TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('registration', 'charge', 'prepay')),
    receipt_no TEXT UNIQUE,
    patient_id TEXT NOT NULL,
    amount_fen BIGINT NOT NULL CHECK (amount_fen >= 0),
    pay_mode TEXT NOT NULL,
    channel_trade_no TEXT NOT NULL,
    pay_time TIMESTAMP(0) NOT NULL,
    recorded_at TIMESTAMP(0) NOT NULL,
    schedule_id TEXT,
    lock_id TEXT,
    visit_no TEXT,
    inpatient_no TEXT,
    bill_nos TEXT
);
CREATE INDEX trades_trade_no ON trades (trade_no);
CREATE INDEX trades_recorded ON trades (recorded_at, id);
CREATE TABLE refunds (
    id BIGSERIAL PRIMARY KEY,
    refund_no TEXT NOT NULL UNIQUE,
    trade_no TEXT NOT NULL,
    trade_id BIGINT NOT NULL REFERENCES trades (id),
    amount_fen BIGINT NOT NULL CHECK (amount_fen > 0),
    refundable_fen BIGINT NOT NULL,
    reason TEXT,
    his_refund_id TEXT UNIQUE,
    applied_at TIMESTAMP(0) NOT NULL,
    channel_refund_no TEXT,
    refund_time TIMESTAMP(0),
    writeback_receipt_no TEXT UNIQUE,
    written_back_at TIMESTAMP(0),
    cancel_receipt_no TEXT UNIQUE,
    cancel_reason TEXT,
    cancelled_at TIMESTAMP(0)
);
CREATE INDEX refunds_trade ON refunds (trade_no);
CREATE INDEX refunds_applied ON refunds (applied_at, id);
CREATE TABLE applications (
    id BIGSERIAL PRIMARY KEY,
    operation TEXT NOT NULL,
    trade_no TEXT,
    refund_no TEXT,
    applied_at TIMESTAMP(0) NOT NULL
);

-- The Winning-style charge: open a session, add bill lines, submit. Nothing here is visible to anyone else
-- until the caller commits, and a sequence rolled back halfway leaves no trace.
CREATE TABLE his_charge_sessions (
    session_id BIGSERIAL PRIMARY KEY,
    trade_no TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    opened_at TIMESTAMP(0) NOT NULL,
    submitted_trade_id BIGINT
);
CREATE TABLE his_charge_lines (
    session_id BIGINT NOT NULL REFERENCES his_charge_sessions (session_id),
    line_no INTEGER NOT NULL,
    bill_no TEXT NOT NULL,
    PRIMARY KEY (session_id, line_no),
    UNIQUE (session_id, bill_no)
);

-- Fault injection, consulted by every procedure (operation: the procedure name, the dispatcher's method, or '*').
-- mode: 'latency' (sleep sleep_ms, then work normally), 'error' (answer status F / ResultCode error_code,
-- nothing applied), 'deadlock' (raise SQLSTATE 40001). sleep_ms delays every mode. remaining: how many calls
-- the rule still takes (NULL: until deleted). A rule that raises is rolled back with the caller's transaction,
-- so it is not consumed: delete it when done.
CREATE TABLE his_faults (
    id BIGSERIAL PRIMARY KEY,
    operation TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('latency', 'error', 'deadlock')),
    sleep_ms INTEGER NOT NULL DEFAULT 0,
    error_code TEXT NOT NULL DEFAULT '9999',
    remaining INTEGER,
    hits INTEGER NOT NULL DEFAULT 0
);

INSERT INTO patients VALUES
    ('P0001', '张三', 'M', '1985-03-12', 'C0001', '110105198503120012', '13800000001'),
    ('P0002', '李四', 'F', '1990-07-08', 'C0002', '310115199007080028', '13800000002'),
    ('P0003', '王五', 'M', '1978-11-30', 'C0003', '440305197811300034', '13800000003'),
    ('P0004', '赵六', 'F', '2016-05-21', 'C0004', '510107201605210045', '13800000004');
INSERT INTO schedules (schedule_id, dept_name, doctor_name, visit_date, period, fee_fen, capacity)
SELECT s, d, doc, (now() AT TIME ZONE 'Asia/Shanghai')::date, p, fee, cap FROM (VALUES
    ('S001', '内科', '刘医生', '上午', 1000, 30),
    ('S002', '外科', '陈主任', '上午', 5000, 5),
    ('S003', '儿科', '周医生', '下午', 1500, 1)) AS v (s, d, doc, p, fee, cap);
INSERT INTO bills (bill_no, patient_id, dept_name, amount_fen, created_at)
SELECT b, pid, d, amt, date_trunc('second', now() AT TIME ZONE 'Asia/Shanghai') FROM (VALUES
    ('B0001', 'P0001', '内科', 1250),
    ('B0002', 'P0001', '检验科', 8600),
    ('B0003', 'P0002', '放射科', 26000),
    ('B0004', 'P0002', '药房', 4380),
    ('B0005', 'P0003', '内科', 2000),
    ('B0006', 'P0004', '儿科', 3550)) AS v (b, pid, d, amt);
INSERT INTO inpatients VALUES ('Z0001', 'P0003', '心内科一病区', 200000);
