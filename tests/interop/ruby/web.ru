# frozen_string_literal: true

# Sidekiq 6.4's web UI (plus sidekiq-cron's "Cron" tab) as a bare Rack app, for interop tests.
#
#   REDIS_URL=redis://127.0.0.1:6379/14 puma --bind tcp://127.0.0.1:9292 --threads 1:4 \
#       --environment production tests/interop/ruby/web.ru
#
# Ready when `curl -fsS http://127.0.0.1:9292/` answers 200 (Dashboard HTML). Pages:
# /busy /queues /queues/<name> /retries /scheduled /morgue /cron. Stop puma with TERM.
#
# Sidekiq 6.4's CSRF protection needs a Rack session (it fails every request without one), so
# a cookie session is mounted first. POST actions (retry, delete, kill, quiet, stop) need the
# session cookie *and* the form's `authenticity_token` from a preceding GET of the same page
# (the token rotates after every POST). See README.md in this directory.

require "securerandom"
require "rack/session/cookie"
require "sidekiq"
require "sidekiq/web"

# Debian pairs Sidekiq 6.4.1 with redis-rb 4.8, which prints a deprecation warning to stderr
# on every SADD and BRPOP; Sidekiq never reads SADD's return value (see worker_app.rb).
Redis.sadd_returns_boolean = false
Redis.silence_deprecations = true

abort "web.ru: REDIS_URL must be set (e.g. redis://127.0.0.1:6379/14)" unless ENV["REDIS_URL"]

Sidekiq.configure_client do |config|
  # SIDEKIQ_NAMESPACE=myapp: redis-namespace, every key "myapp:<key>" (see worker_app.rb)
  config.redis = {url: ENV.fetch("REDIS_URL"), size: 5, namespace: ENV["SIDEKIQ_NAMESPACE"]}.compact
end

begin
  require "sidekiq/cron/web" # adds the "Cron" tab (Debian ruby-sidekiq-cron 1.8.0)
rescue LoadError
  warn "web.ru: sidekiq-cron not installed; no Cron tab"
end

# A fresh secret per boot is fine for tests: sessions only need to outlive one puma process.
use Rack::Session::Cookie,
  key: "sidekiq.session",
  secret: ENV.fetch("SIDEKIQ_WEB_SECRET") { SecureRandom.hex(64) },
  same_site: true,
  max_age: 86_400

run Sidekiq::Web
