-- How much of the stored object an import has read: with size_bytes, how far a
-- file being imported has come. For a .gz file these are compressed bytes, as
-- size_bytes counts them. A file imported before this column existed was read
-- whole if it was stored at all.
ALTER TABLE uploads ADD COLUMN bytes_read bigint NOT NULL DEFAULT 0;
UPDATE uploads SET bytes_read = size_bytes WHERE status IN ('processed', 'partially_processed');
