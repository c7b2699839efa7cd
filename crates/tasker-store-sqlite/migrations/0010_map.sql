-- Mapped steps: `map` keeps a mapped step's fan-out (JSON, on its instances too); an instance
-- names its mapped step (`map_of`), its index and its input (JSON: item or items, and index).
-- Keep in step with the other backend's 0010_map.sql.

ALTER TABLE steps ADD COLUMN map TEXT;
ALTER TABLE steps ADD COLUMN map_of INTEGER;
ALTER TABLE steps ADD COLUMN map_index INTEGER;
ALTER TABLE steps ADD COLUMN map_input TEXT;
CREATE INDEX steps_map_of_idx ON steps (map_of) WHERE map_of IS NOT NULL;
