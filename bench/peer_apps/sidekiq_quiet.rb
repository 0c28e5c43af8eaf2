# frozen_string_literal: true

# worker_app.rb with Sidekiq's per-job lines off: the logger at ERROR, so neither "start"
# nor "done" is formatted or written (the bench's "logging off" rows, against
# `kiq worker --log-level error`).
#
#   sidekiq -r ./bench/peer_apps/sidekiq_quiet.rb -c 10 -q default

require_relative "../../tests/interop/ruby/worker_app"

Sidekiq.logger.level = Logger::ERROR
