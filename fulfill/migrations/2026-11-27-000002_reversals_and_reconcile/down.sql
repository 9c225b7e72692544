DROP TABLE reconcile_cursors;
DROP INDEX checkout_sessions_flagged_idx;
ALTER TABLE checkout_sessions DROP COLUMN attention;
ALTER TABLE checkout_sessions DROP COLUMN reversed_credits;
