# frozen_string_literal: true

# A Sidekiq 6.4 "app" (job classes only) for interop tests and benches.
#
#   REDIS_URL=redis://127.0.0.1:6379/14 sidekiq -r ./tests/interop/ruby/worker_app.rb -q default -c 5
#
# `-r` must be a file *path* ("./worker_app.rb" or absolute): Sidekiq 6.4's CLI checks
# File.exist? and then does a plain `require`, which searches $LOAD_PATH for bare names.
# Logs (Pretty formatter, INFO: one "start" and one "done" line per job) go to stdout.
#
# Jobs:
#   RubyEcho(*args)        RPUSH interop:ruby:done {"jid":..., "args":[...]}
#   RubyFail(*args)        raise ArgumentError, "boom from ruby" (retry: 3, backtrace: true)
#   RubyNoop(*args)        nothing (benchmarks)
#   RubySlow(seconds)      sleep seconds
#   RubyLatency(sent, key = "bench:latency")
#                          RPUSH key (Time.now.to_f - sent): end-to-end latency in seconds

require "json"
require "sidekiq"

# Debian pairs Sidekiq 6.4.1 with redis-rb 4.8, which prints a deprecation warning to stderr
# on every SADD (each push, each heartbeat) and every BRPOP (each fetch, i.e. every job and
# every 2 s idle). Sidekiq never reads SADD's return value, so take redis-rb 5's Integer
# behaviour (no warning, no caller() walk) and silence the rest.
Redis.sadd_returns_boolean = false
Redis.silence_deprecations = true

abort "worker_app.rb: REDIS_URL must be set (e.g. redis://127.0.0.1:6379/14)" unless ENV["REDIS_URL"]

# Knobs for tests (all optional; unset = Sidekiq 6.4's production behaviour):
#   SIDEKIQ_NAMESPACE=myapp              redis-namespace (needs the ruby-redis-namespace
#                                        package); every key becomes "myapp:<key>"
#   SIDEKIQ_POLL_INTERVAL_AVERAGE=0.5    Sidekiq.options[:poll_interval_average]: the
#                                        scheduled/retry poller's average sleep, seconds
#   SIDEKIQ_POLL_INITIAL_WAIT=0          replaces the poller's first sleep (10 + 5*rand s,
#                                        or 5*rand s once an average is set)
#   SIDEKIQ_BEAT_PAUSE=1                 Launcher::BEAT_PAUSE (heartbeat period, 5 s):
#                                        stats flush, busy jobs and remote signals
if ENV["SIDEKIQ_NAMESPACE"]
  Sidekiq.configure_server do |config|
    config.redis = {url: ENV.fetch("REDIS_URL"), namespace: ENV["SIDEKIQ_NAMESPACE"]}
  end
end
if ENV["SIDEKIQ_POLL_INTERVAL_AVERAGE"]
  Sidekiq.options[:poll_interval_average] = Float(ENV["SIDEKIQ_POLL_INTERVAL_AVERAGE"])
end
if ENV["SIDEKIQ_POLL_INITIAL_WAIT"]
  require "sidekiq/scheduled"
  module InteropInitialWait
    def initial_wait
      @sleeper.pop(Float(ENV["SIDEKIQ_POLL_INITIAL_WAIT"]))
    rescue Timeout::Error
    end
  end
  Sidekiq::Scheduled::Poller.prepend(InteropInitialWait)
end
if ENV["SIDEKIQ_BEAT_PAUSE"]
  require "sidekiq/launcher"
  Sidekiq::Launcher.send(:remove_const, :BEAT_PAUSE)
  Sidekiq::Launcher.const_set(:BEAT_PAUSE, Float(ENV["SIDEKIQ_BEAT_PAUSE"]))
end

class RubyEcho
  include Sidekiq::Worker

  def perform(*args)
    record = JSON.generate({"jid" => jid, "args" => args})
    Sidekiq.redis { |r| r.rpush("interop:ruby:done", record) }
  end
end

class RubyFail
  include Sidekiq::Worker
  sidekiq_options retry: 3, backtrace: true

  def perform(*)
    raise ArgumentError, "boom from ruby"
  end
end

class RubyNoop
  include Sidekiq::Worker

  def perform(*)
  end
end

class RubySlow
  include Sidekiq::Worker

  def perform(seconds = 1, *)
    sleep(seconds.to_f)
  end
end

class RubyLatency
  include Sidekiq::Worker

  def perform(sent, key = "bench:latency")
    latency = Time.now.to_f - sent.to_f
    Sidekiq.redis { |r| r.rpush(key, latency.to_s) }
  end
end
