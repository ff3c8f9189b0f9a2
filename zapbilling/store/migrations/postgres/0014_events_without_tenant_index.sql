-- Nothing on PostgreSQL: the SQLite migration of this number drops events_tenant and lists a tenant's
-- events of every type by merging events_tenant_type's ranges; here events_tenant stays.
SELECT 1;
