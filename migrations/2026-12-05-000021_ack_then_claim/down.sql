DROP FUNCTION dx_ack_work_claim(text, text, text, jsonb, bigint, text, bigint, text, bigint, integer, text[], text);
