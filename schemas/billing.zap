# zapbilling: every type and operation of the billing service.
#
# This file is the single source of truth. The server's command registry, its params and
# result models, the REST routes, zap.discover and the contract tests are all derived from it.
# The language is described in docs/zap-schema.md; the behaviour of each operation in
# docs/api.md, which `zapbilling gen docs` generates from this file. Methods and fields are
# append-only.

# The direction of a ledger row. Amounts are always positive.
enum TransactionType
  deposit
  withdraw
  hold
  hold-removed
  transfer

# A user's money in one currency, in cents.
struct Balance
  user Text
  currency Text
  balance Int64
  holds Int64
  available Int64                 # max(balance - holds, 0)

struct CurrencyBalance
  currency Text
  balance Int64
  holds Int64
  available Int64

# Every currency a user holds, sorted by currency.
struct BalanceAll
  user Text
  balances List(CurrencyBalance)

# One usage withdrawal (tag api-usage).
struct UsageRecord
  transactionId Text
  amount Int64
  currency Text
  notes Text
  metadata Data
  createdAt Text

# A page of usage withdrawals, newest first.
struct UsagePage
  user Text
  count Int64                     # rows in this page
  hasMore Bool
  usage List(UsageRecord)

# One metered API request to charge for.
struct UsageRequest
  user Text
  currency Text = "usd"
  amount Int64                    # cents; 0 or less records nothing (status "skipped")
  model Text = ""
  provider Text = ""
  promptTokens Int64 = 0
  completionTokens Int64 = 0
  totalTokens Int64 = 0
  requestId Text?                 # a repeat for the same user returns the original transaction
  premium Bool = false
  stream Bool = false
  status Text = ""
  clientIp Text = ""

# The transaction fields are absent when nothing was recorded (status "skipped").
struct UsageResult
  user Text
  amount Int64
  transactionId Text?
  currency Text?
  type TransactionType?
  status Text?

struct DepositRequest
  user Text
  currency Text = "usd"
  amount Int64                    # cents, positive
  notes Text?                     # default "Deposit: <amount> cents <currency>"
  tags Text = ""                  # comma-separated
  expiresIn Int64 = 0             # days; 0 or negative never expires
  metadata Data?

struct DepositResult
  transactionId Text
  user Text
  amount Int64
  currency Text
  type TransactionType
  tags Text
  metadata Data
  expiresAt Text?

struct StarterCreditResult
  transactionId Text
  user Text
  amount Int64
  currency Text
  type TransactionType
  tags Text
  expiresAt Text

struct RefundRequest
  user Text
  currency Text = "usd"
  amount Int64                    # cents, positive; all refunds of one original <= its amount
  originalTransactionId Text      # a charge (withdraw) of the same user and currency
  notes Text?                     # default "Refund: <amount> cents <currency> (original tx: <id>)"

struct RefundResult
  transactionId Text
  user Text
  amount Int64
  currency Text
  type TransactionType
  tags Text
  originalTransactionId Text

# How a meter turns its events into one quantity.
enum AggregationType
  sum
  count
  last                            # the value of the latest-timestamped event
  max
  min
  unique_count                    # the number of distinct values

# A usage meter: events named eventName are aggregated per user and period.
struct Meter
  id Text
  name Text
  eventName Text                  # unique within an org and mode
  aggregationType AggregationType
  currency Text
  dimensions List(Text)
  createdAt Text

struct CreateMeterRequest
  name Text
  eventName Text
  aggregationType AggregationType = "sum"
  currency Text = "usd"
  dimensions List(Text) = []

struct MeterList
  meters List(Meter)              # creation order
  count Int64                     # rows in this page
  hasMore Bool

# One usage event for a meter. Values may be zero or negative.
struct MeterEventInput
  meterId Text
  userId Text
  value Int64 = 0
  timestamp Text?                 # RFC 3339 (or a bare date); default now
  idempotency Text?               # a key seen before in this org and mode makes the event a duplicate
  dimensions Map(Text, Text)?

enum MeterEventStatus
  created
  duplicate

struct MeterEventResult
  id Text                         # for a duplicate, the original event's id
  status MeterEventStatus

struct MeterEventsResult
  events List(MeterEventResult)   # input order
  count Int64

struct MeterEventsSummary
  meterId Text
  meterName Text
  userId Text                     # "" for every user of the org and mode
  aggregationType AggregationType
  value Int64
  eventCount Int64                # events in the period, whatever the aggregation
  periodStart Text                # as given; "" for unbounded
  periodEnd Text

# A separate pot of credit, burned before the balance is charged.
struct CreditGrant
  id Text
  userId Text
  name Text
  amountCents Int64
  remainingCents Int64
  currency Text
  priority Int64                  # lower burns first
  effectiveAt Text
  expiresAt Text?
  eligibility List(Text)          # meter ids; empty: usage of any meter
  tags Text
  voided Bool
  active Bool                     # not voided, something left, effective and not expired
  createdAt Text

struct CreateCreditGrantRequest
  userId Text
  name Text = ""
  amountCents Int64
  currency Text = "usd"
  expiresIn Text?                 # a Go-style duration: 720h, 1h30m, 90m
  priority Int64 = 0
  eligibility List(Text) = []
  tags Text = ""

struct CreditGrantList
  grants List(CreditGrant)        # creation order
  count Int64

struct CreditAvailable
  currency Text
  available Int64

struct CreditBalance
  userId Text
  balances List(CreditAvailable)  # remaining of active grants, by currency

struct VoidResult
  id Text
  voided Bool

struct BurnRequest
  userId Text
  amount Int64
  meterId Text?                   # only grants eligible for this meter burn
  currency Text = "usd"           # only grants of this currency burn

struct GrantBurn
  id Text
  burned Int64
  remainingCents Int64

struct BurnResult
  userId Text
  currency Text
  requested Int64
  burned Int64
  overage Int64                   # requested - burned
  grants List(GrantBurn)          # burn order
  burnId Text?                    # the credit journal rows of this burn share it; absent when nothing burned

enum PricingModel
  per_unit
  tiered                          # graduated: each unit priced by the tier it falls in
  volume                          # the tier the whole quantity falls in prices every unit

# upTo is the cumulative last unit of the tier; 0 (no bound) on the last tier and only there.
struct PriceTier
  upTo Int64 = 0
  price Int64 = 0                 # cents per unit
  flat Int64 = 0                  # cents, once when the tier is used

struct PricingRule
  id Text
  meterId Text
  planId Text                     # "" for a rule of no particular plan
  model PricingModel
  currency Text
  unitPrice Int64
  tiers List(PriceTier)
  createdAt Text

struct CreatePricingRuleRequest
  meterId Text
  planId Text = ""
  model PricingModel = "per_unit"
  currency Text = "usd"
  unitPrice Int64 = 0
  tiers List(PriceTier) = []

struct PricingRuleList
  rules List(PricingRule)         # creation order
  count Int64

struct DeleteResult
  id Text
  deleted Bool

struct InvoicePreviewRequest
  userId Text
  periodStart Text?               # absent: unbounded; a bare date starts at 00:00
  periodEnd Text?                 # absent: unbounded; a bare date includes that day
  currency Text = "usd"
  planId Text?

struct InvoiceLineItem
  meterId Text
  meterName Text
  quantity Int64
  unitCost Int64                  # the price every unit pays; 0 for graduated pricing
  totalCost Int64
  model Text                      # "" when the meter has no pricing rule

struct InvoicePreview
  userId Text
  periodStart Text
  periodEnd Text
  lineItems List(InvoiceLineItem) # meter creation order
  subtotal Int64
  creditApplied Int64
  amountDue Int64                 # subtotal - creditApplied
  currency Text

# Where a hold stands. A pending hold past expiresAt reports expired from that instant.
enum HoldStatus
  pending                         # reserving money: counted in holds, taken off available
  captured                        # charged (all of it or less) by one usage withdrawal
  released                        # given back without a charge
  expired                         # not settled before expiresAt: released by time

# Money reserved for a request whose real cost is known only afterwards (a card authorisation).
# It lowers available while pending; the balance changes only when it is captured.
struct Hold
  holdId Text
  user Text
  currency Text
  amount Int64                    # cents reserved
  status HoldStatus
  expiresAt Text                  # createdAt + expiresIn
  createdAt Text
  capturedAmount Int64?           # captured only: what was charged; the rest was released
  transactionId Text?             # captured only: the withdraw that charged it
  requestId Text?                 # a repeat for the same user returns this hold
  metadata Data?
  settledAt Text?                 # when it was captured or released (an expired hold: expiresAt)

struct CreateHoldRequest
  user Text
  currency Text = "usd"
  amount Int64                    # cents, positive
  expiresIn Int64 = 900           # seconds, 1 to 604800 (7 days)
  requestId Text?                 # a repeat for the same user returns the original hold
  allowOverdraft Bool = false     # hold even beyond what is available
  metadata Data?

struct CaptureHoldRequest
  id Text                         # the hold
  amount Int64?                   # cents, positive, at most the hold; absent: the whole hold
  model Text = ""
  notes Text?                     # default "API usage: <model> (hold <holdId>)"
  metadata Data?                  # kept on the withdraw, with the holdId

# A page of holds, newest first.
struct HoldList
  holds List(Hold)
  count Int64                     # rows in this page
  hasMore Bool

# One row of the ledger: every movement of a user's money. Amounts are always positive.
struct Transaction
  transactionId Text
  user Text
  currency Text
  type TransactionType
  amount Int64
  tags Text                       # comma-separated: api-usage, refund, starter-credit, credit-expired, ...
  notes Text
  metadata Data
  createdAt Text
  expiresAt Text?                 # an expiring deposit
  originalTransactionId Text?     # a refund: the charge it refunds
  holdId Text?                    # a hold's capture: the hold it charged
  keyId Text                      # the API key whose call wrote it; "system" for the server's own sweep

# A page of ledger rows, newest first.
struct TransactionPage
  user Text
  count Int64                     # rows in this page
  hasMore Bool
  transactions List(Transaction)

# One user's money in the currency of the listing, as getBalance reports it.
struct Account
  user Text
  balance Int64
  holds Int64
  available Int64

# A page of accounts, in byte order of user.
struct AccountPage
  currency Text
  count Int64                     # rows in this page
  hasMore Bool
  accounts List(Account)

# What changed a credit grant's remainingCents.
enum CreditTransactionType
  grant                           # created: + amountCents
  burn                            # spent by one burnCredits call
  void                            # voided: what was left
  expire                          # reached expiresAt: what was left

# One immutable row of the credit grants' journal. For every grant, its rows sum to remainingCents.
struct CreditTransaction
  id Text
  grantId Text
  userId Text
  currency Text
  type CreditTransactionType
  amount Int64                    # signed: + for grant, - (or 0 for a void of nothing) otherwise
  remainingAfter Int64            # the grant's remainingCents after this row
  burnId Text?                    # burn rows: shared by the rows of one burnCredits call
  meterId Text?                   # burn rows: the meter the burn was for
  createdAt Text
  keyId Text                      # the API key whose call wrote it; "system" for the server's own sweep

# A page of credit journal rows, newest first.
struct CreditTransactionPage
  userId Text
  count Int64                     # rows in this page
  hasMore Bool
  transactions List(CreditTransaction)

# What an event is about. usage.recorded is high volume: it reaches only the endpoints that name it.
enum EventType
  deposit.created
  refund.created
  credit.expired                  # a forfeit of expired credit
  hold.captured
  hold.released
  hold.expired
  grant.depleted                  # a burn took the grant's remaining to 0
  grant.voided
  grant.expired
  alert.triggered
  spend_cap.reached
  usage.recorded
  webhook_endpoint.disabled       # its last 50 deliveries all failed

enum WebhookEndpointStatus
  enabled
  disabled                        # its last 50 deliveries all failed: nothing is sent to it

# A URL that receives events, signed to the Standard Webhooks specification.
struct WebhookEndpoint
  id Text
  url Text
  events List(Text)               # event types, or ["*"]: every type but usage.recorded
  description Text
  status WebhookEndpointStatus
  createdAt Text
  secret Text?                    # whsec_...: in createWebhookEndpoint's answer only

struct WebhookEndpointList
  endpoints List(WebhookEndpoint)
  count Int64

struct WebhookSecret
  id Text
  secret Text                     # the new secret, shown this once

enum DeliveryStatus
  pending
  succeeded
  failed                          # every attempt of the schedule failed

# One attempt to deliver an event to an endpoint (or, pending, the next one).
struct EventDelivery
  endpointId Text
  attempt Int64                   # 1 for the first attempt
  status DeliveryStatus
  responseStatus Int64?           # the receiver's HTTP status, if it answered
  error Text?                     # why the attempt failed, if it did
  at Text                         # when it was made (pending: when it is due)

# Something that happened: data is the object it is about, as the API returns it.
struct Event
  id Text                         # evt_...: the webhook-id of its deliveries
  type EventType
  createdAt Text
  data Data
  deliveries List(EventDelivery)? # getEvent only: its delivery log, oldest first

# A page of events, newest first.
struct EventPage
  count Int64                     # rows in this page
  hasMore Bool
  events List(Event)

struct Redelivery
  id Text
  queued Int64                    # deliveries queued now

enum AlertType
  balance_below                   # available below threshold cents
  usage_above                     # the period's usage above threshold (cents, or the meter's units)

enum Period
  day                             # the calendar day, UTC
  month                           # the calendar month, UTC

# A condition that records alert.triggered once each time a write makes it true.
struct Alert
  id Text
  type AlertType
  userId Text?                    # absent: every user of the org and mode
  currency Text
  threshold Int64
  period Period?                  # usage_above only
  meterId Text?                   # usage_above only: the threshold is in the meter's units
  createdAt Text

struct AlertList
  alerts List(Alert)
  count Int64

# A hard limit on one user's spending per period: usage withdrawals plus pending holds, in cents.
struct SpendCap
  user Text
  currency Text
  period Period
  limit Int64
  used Int64                      # this period's usage withdrawals plus pending holds

struct SpendCapEntry
  currency Text
  period Period
  limit Int64
  used Int64

struct SpendCapList
  user Text
  caps List(SpendCapEntry)

struct SpendCapDeleted
  deleted Bool

# The length of one window of a meter's series, aligned to UTC.
enum WindowSize
  hour
  day

# One window of a meter's series: [start, end), with the meter's aggregate of its events.
struct SeriesWindow
  start Text
  end Text
  value Int64                     # 0 for a window without events
  eventCount Int64

# A meter's usage over a period, window by window.
struct MeterEventsSeries
  meterId Text
  meterName Text
  userId Text?                    # absent: every user of the org and mode
  aggregationType AggregationType
  windowSize WindowSize
  windows List(SeriesWindow)      # every window of the period, in time order

interface BillingService
  # The user's balance in one currency. A user never seen has zeros.
  getBalance (user Text, currency Text = "usd") -> (balance Balance)
    @http GET /api/v1/billing/balance
  # The user's balances in every currency they hold.
  getBalanceAll (user Text) -> (balances BalanceAll)
    @http GET /api/v1/billing/balance/all
  # The user's usage withdrawals, newest first, paged.
  getUsage (user Text, currency Text?, limit Int64 = 100, startingAfter Text?) -> (page UsagePage)
    @http GET /api/v1/billing/usage
  # Charge a usage withdrawal (no balance check: the usage already happened).
  recordUsage (request UsageRequest) -> (result UsageResult)
    @http POST /api/v1/billing/usage 201
  # Add funds to a user's account.
  deposit (request DepositRequest) -> (result DepositResult)
    @http POST /api/v1/billing/deposit 201
  # The one-time $5.00 welcome credit, expiring after 30 days; a repeat returns the original.
  grantStarterCredit (user Text) -> (result StarterCreditResult)
    @http POST /api/v1/billing/credit 201
  # Give back money against an earlier charge (a withdraw), never more than its amount.
  refund (request RefundRequest) -> (result RefundResult)
    @http POST /api/v1/billing/refund 201
  # Define a usage meter.
  createMeter (request CreateMeterRequest) -> (meter Meter)
    @http POST /api/v1/billing/meters 201
  # The meters of the org and mode, in creation order, paged.
  listMeters (limit Int64 = 100, startingAfter Text?) -> (meters MeterList)
    @http GET /api/v1/billing/meters
  # One meter by id.
  getMeter (id Text) -> (meter Meter)
    @http GET /api/v1/billing/meters/{id}
  # Record 1..100 events, all or nothing.
  recordMeterEvents (events List(MeterEventInput) = []) -> (result MeterEventsResult)
    @http POST /api/v1/billing/meter-events 201
  # A meter's aggregate over a period, for one user or all.
  getMeterEventsSummary (meterId Text, userId Text?, periodStart Text?, periodEnd Text?) -> (summary MeterEventsSummary)
    @http GET /api/v1/billing/meter-events/summary
  # Give a user a pot of credit, optionally expiring and limited to some meters.
  createCreditGrant (request CreateCreditGrantRequest) -> (grant CreditGrant)
    @http POST /api/v1/billing/credit-grants 201
  # A user's grants in creation order, with whether each is voided and active.
  listCreditGrants (userId Text) -> (grants CreditGrantList)
    @http GET /api/v1/billing/credit-grants
  # What a user's active grants hold, per currency.
  getCreditBalance (userId Text) -> (balance CreditBalance)
    @http GET /api/v1/billing/credit-balance
  # Make a grant unusable from now on.
  voidCreditGrant (id Text) -> (result VoidResult)
    @http POST /api/v1/billing/credit-grants/{id}/void
  # Spend active grants: priority ascending, then earliest expiry, never-expiring last.
  burnCredits (request BurnRequest) -> (result BurnResult)
    @http POST /api/v1/billing/credit-grants/burn
  # Price a meter's quantity: per unit, graduated tiers or volume tiers.
  createPricingRule (request CreatePricingRuleRequest) -> (rule PricingRule)
    @http POST /api/v1/billing/pricing-rules 201
  # Pricing rules in creation order, optionally of one meter and/or one plan.
  listPricingRules (meterId Text?, planId Text?) -> (rules PricingRuleList)
    @http GET /api/v1/billing/pricing-rules
  # Remove a pricing rule.
  deletePricingRule (id Text) -> (result DeleteResult)
    @http DELETE /api/v1/billing/pricing-rules/{id}
  # Usage x pricing - credits for a period. Changes nothing, not even the grants it applies.
  invoicePreview (request InvoicePreviewRequest) -> (preview InvoicePreview)
    @http POST /api/v1/billing/invoice-preview
    @readonly
  # Reserve money for a request whose cost is known later; refused beyond what is available.
  createHold (request CreateHoldRequest) -> (hold Hold)
    @http POST /api/v1/billing/holds 201
  # Charge a pending hold, all of it or less, as one usage withdrawal; the rest is released.
  captureHold (request CaptureHoldRequest) -> (hold Hold)
    @http POST /api/v1/billing/holds/{id}/capture
  # Give a pending hold back to available without charging anything.
  releaseHold (id Text) -> (hold Hold)
    @http POST /api/v1/billing/holds/{id}/release
  # One hold, with its status as of now.
  getHold (id Text) -> (hold Hold)
    @http GET /api/v1/billing/holds/{id}
  # Holds newest first, paged: one user's, or without user every user's of the org and mode.
  listHolds (user Text?, status HoldStatus?, limit Int64 = 100, startingAfter Text?) -> (holds HoldList)
    @http GET /api/v1/billing/holds
  # Every ledger row of a user, newest first, paged: deposits, refunds, usage, captures, forfeits.
  listTransactions (user Text, currency Text?, type TransactionType?, tag Text?, createdAfter Text?, createdBefore Text?, limit Int64 = 100, startingAfter Text?) -> (page TransactionPage)
    @http GET /api/v1/billing/transactions
  # Every user of the org and mode with money or a pending hold in one currency, by user, paged.
  listAccounts (currency Text = "usd", maxAvailable Int64?, limit Int64 = 100, startingAfter Text?) -> (page AccountPage)
    @http GET /api/v1/billing/accounts
  # The credit grants' journal of a user (or of one grant), newest first, paged.
  listCreditTransactions (userId Text, grantId Text?, limit Int64 = 100, startingAfter Text?) -> (page CreditTransactionPage)
    @http GET /api/v1/billing/credit-transactions
  # Subscribe a URL to events; the answer carries the signing secret, shown this once.
  createWebhookEndpoint (url Text, events List(Text), description Text = "") -> (endpoint WebhookEndpoint)
    @http POST /api/v1/billing/webhook-endpoints 201
  # The webhook endpoints of the org and mode, in creation order, without their secrets.
  listWebhookEndpoints () -> (endpoints WebhookEndpointList)
    @http GET /api/v1/billing/webhook-endpoints
  # Stop delivering to an endpoint; its past deliveries stay in the events' logs.
  deleteWebhookEndpoint (id Text) -> (result DeleteResult)
    @http DELETE /api/v1/billing/webhook-endpoints/{id}
  # A new signing secret; for 24 hours deliveries are signed with the old one too.
  rotateWebhookSecret (id Text) -> (result WebhookSecret)
    @http POST /api/v1/billing/webhook-endpoints/{id}/rotate-secret
  # Events of the org and mode, newest first, paged; kept at least 30 days.
  # `userId` is zapbilling's addition beyond the contract (appended after its parameters): only the
  # events about that account, the user in their data (a Transaction's or a Hold's `user`, a
  # CreditGrant's `userId`, alert.triggered's `userId`, spend_cap.reached's `user`); the events
  # about no account (webhook_endpoint.disabled) are in no user's list.
  listEvents (type EventType?, limit Int64 = 100, startingAfter Text?, userId Text?) -> (page EventPage)
    @http GET /api/v1/billing/events
  # One event with the log of its deliveries.
  getEvent (id Text) -> (event Event)
    @http GET /api/v1/billing/events/{id}
  # Deliver an event again: to one endpoint, or to every endpoint subscribed to its type.
  redeliverEvent (id Text, endpointId Text?) -> (result Redelivery)
    @http POST /api/v1/billing/events/{id}/redeliver
  # Be told (alert.triggered) when a balance falls below, or a period's usage rises above, a threshold.
  createAlert (type AlertType, userId Text?, currency Text = "usd", threshold Int64, period Period?, meterId Text?) -> (alert Alert)
    @http POST /api/v1/billing/alerts 201
  # The alerts of the org and mode, in creation order; with userId, that user's and the org-wide ones.
  listAlerts (userId Text?) -> (alerts AlertList)
    @http GET /api/v1/billing/alerts
  # Remove an alert.
  deleteAlert (id Text) -> (result DeleteResult)
    @http DELETE /api/v1/billing/alerts/{id}
  # Cap a user's spending per day or month: holds past it are refused; usage past it is recorded and announced.
  setSpendCap (user Text, currency Text = "usd", period Period, limit Int64) -> (cap SpendCap)
    @http PUT /api/v1/billing/spend-caps
  # A user's spend caps with what each period has used so far.
  getSpendCaps (user Text) -> (caps SpendCapList)
    @http GET /api/v1/billing/spend-caps
  # Remove one of a user's spend caps.
  deleteSpendCap (user Text, currency Text = "usd", period Period) -> (result SpendCapDeleted)
    @http DELETE /api/v1/billing/spend-caps
  # A meter's aggregate per hour or day over a period (every window, empty ones at 0), computed by the database.
  getMeterEventsSeries (meterId Text, userId Text?, periodStart Text, periodEnd Text, windowSize WindowSize = "day") -> (series MeterEventsSeries)
    @http GET /api/v1/billing/meter-events/series
