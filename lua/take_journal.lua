#!lua
-- take_journal: the journal entry of an unfinished consumer batch, taken for its recovery by another
-- consumer (or by this one after a crash), and flagged so: the batch's own consumer, if it is still
-- alive and finishes the batch meanwhile, then keeps the batch's drain marks (finish_consumed.lua
-- tells it), and the drains the recovery re-applies count once however late they land.
--
-- Key layout: as begin_consumed.lua (one slot per consumer group, hash tag {c:<group>}):
--   KEYS[1]  eng:{c:<group>}:journal  HASH  batch id -> journal entry; "r:<batch id>" -> 1 while a
--                                           recovery has taken it
-- ARGV:
--   ARGV[1]  batch id
-- Returns the entry, or false once the batch is finished (nothing written then).

local journal_key, batch_id = KEYS[1], ARGV[1]
local entry = redis.call('HGET', journal_key, batch_id)
if entry then
  redis.call('HSET', journal_key, 'r:' .. batch_id, 1)
end
return entry
