-- Delivery receipts name a message by the provider's id, or (for providers that only say
-- which address) by channel and address; both find the outbox row and so the customer.
CREATE INDEX outbox_provider_id ON outbox (channel, provider_id) WHERE provider_id IS NOT NULL;
CREATE INDEX outbox_address ON outbox (channel, address, created_at) WHERE status = 'sent';
