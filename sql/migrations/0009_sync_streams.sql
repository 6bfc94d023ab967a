-- The counters of the streams /sync reads besides room events and account
-- data (see 0002 for how a counter row orders commits). Each stream's
-- tables come with the feature that writes them.
INSERT INTO stream_positions (stream, pos) VALUES ('receipts', 0);
INSERT INTO stream_positions (stream, pos) VALUES ('typing', 0);
INSERT INTO stream_positions (stream, pos) VALUES ('presence', 0);
INSERT INTO stream_positions (stream, pos) VALUES ('to_device', 0);
INSERT INTO stream_positions (stream, pos) VALUES ('device_lists', 0);
INSERT INTO stream_positions (stream, pos) VALUES ('notifications', 0);
