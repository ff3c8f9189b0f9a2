-- events_tenant (tenant, seq) is dropped: the listing of a tenant's events of every type is a merge
-- of events_tenant_type's ranges, one per type the tenant has (store/sqlite/webhooks.py
-- _all_events), so a page still costs its rows and a seek per type.
--
-- Why: every event paid for an entry in it (and the group commit for its page), to serve that one
-- listing. recordUsage with an endpoint on usage.recorded: 681k -> 666k instructions per request.
DROP INDEX events_tenant;
