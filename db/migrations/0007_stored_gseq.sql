-- The writer may split a large flush over several connections, one transaction each
-- (marketfeed/history/postgres.py, `writers`); the engine state goes in the last to commit, after
-- the others have. A crash between two of those commits leaves some symbols' ticks of a flush stored
-- and not others', so the newest stored gseq no longer says that everything below it is there.
-- stored_gseq does: every tick up to it is stored, as the writer saw its flushes commit whole. The
-- writer resumes its duplicate filter from it, and anything regenerated above it goes through the
-- checked path, which inserts only what is missing.
ALTER TABLE engine_state ADD COLUMN IF NOT EXISTS stored_gseq bigint;
-- The watermark is kept even before the engine has saved a state (a store written without one).
ALTER TABLE engine_state ALTER COLUMN state DROP NOT NULL;
