# zapbilling: every type and operation of the billing service.
#
# This file is the single source of truth. The server's command registry, its params and
# result models, the REST routes, zap.discover and the contract tests are all derived from it.
# The language is described in ../shared/spec/zap-schema.md; the behaviour of each operation
# in ../shared/spec/billing-api.md. Methods and fields are append-only.

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
  amount Int64 = 0                # cents; 0 or less records nothing
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
  originalTransactionId Text      # a deposit or withdraw of the same user and currency
  notes Text?                     # default "Refund: <amount> cents <currency> (original tx: <id>)"

struct RefundResult
  transactionId Text
  user Text
  amount Int64
  currency Text
  type TransactionType
  tags Text
  originalTransactionId Text

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
  # Give back money against an earlier deposit or withdraw, never more than its amount.
  refund (request RefundRequest) -> (result RefundResult)
    @http POST /api/v1/billing/refund 201
