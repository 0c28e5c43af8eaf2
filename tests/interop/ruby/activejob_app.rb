# frozen_string_literal: true

# Rails' ActiveJob on Sidekiq (Debian ruby-activejob 6.1 + ruby-sidekiq 6.4.1), for the
# ActiveJob interop tests (tests/interop/test_activejob.py).
#
# Two uses, both reading REDIS_URL:
#
#   ruby tests/interop/ruby/activejob_app.rb enqueue
#       perform_later with arguments of every serializer kind (see ENQUEUED below), the
#       way a Rails app does; prints {"jobs": [[job_class, job_id], ...]} as JSON.
#
#   sidekiq -r ./tests/interop/ruby/activejob_app.rb -q activejob
#       a worker whose ActiveJob class AjReport records what it received, as Ruby sees
#       it, in the list interop:activejob:done: each argument described by describe().
#
# No Rails app is loaded: ActiveJob alone, its queue adapter set to :sidekiq.

require "json"
require "bigdecimal"
require "date"
require_relative "worker_app" # the test knobs (fast poller, heartbeat), Redis settings
require "active_job"
require "active_support/core_ext"
require "global_id"

ActiveJob::Base.queue_adapter = :sidekiq
ActiveJob::Base.logger = Logger.new($stderr, level: Logger::WARN)
Sidekiq.configure_client do |config|
  config.redis = {url: ENV.fetch("REDIS_URL"), size: 2}
end
# What a Rails app's config.time_zone sets: the zone of every thread, workers' included.
Time.zone_default = Time.find_zone!("Europe/Berlin")
GlobalID.app = "shop"

# A model GlobalID can name without a database: enough for to_global_id and locate.
class Customer
  include GlobalID::Identification
  attr_reader :id

  def initialize(id)
    @id = id
  end

  def self.find(id)
    new(id)
  end
end

DONE = "interop:activejob:done"
RANGES = ActiveJob::Serializers.const_defined?(:RangeSerializer)

# How Ruby sees a value, as JSON a Python test can compare: class name plus its value.
def describe(value)
  case value
  when ActiveSupport::HashWithIndifferentAccess
    {"class" => "HashWithIndifferentAccess", "value" => value.to_h { |k, v| [k.to_s, describe(v)] }}
  when Hash
    {"class" => "Hash", "keys" => value.keys.map { |k| [k.class.name, k.to_s] },
     "value" => value.to_h { |k, v| [k.to_s, describe(v)] }}
  when Array then {"class" => "Array", "value" => value.map { |v| describe(v) }}
  when Symbol then {"class" => "Symbol", "value" => value.to_s}
  when ActiveSupport::TimeWithZone
    {"class" => "TimeWithZone", "value" => value.iso8601(9), "zone" => value.time_zone.name}
  when DateTime then {"class" => "DateTime", "value" => value.iso8601(9)}
  when Time then {"class" => "Time", "value" => value.iso8601(9)}
  when Date then {"class" => "Date", "value" => value.iso8601}
  when ActiveSupport::Duration then {"class" => "Duration", "value" => value.to_i}
  when BigDecimal then {"class" => "BigDecimal", "value" => value.to_s("F")}
  when Range
    {"class" => "Range", "value" => [describe(value.begin), describe(value.end), value.exclude_end?]}
  when Module then {"class" => "Module", "value" => value.name}
  when Customer then {"class" => "Customer", "value" => value.id}
  else {"class" => value.class.name, "value" => value}
  end
end

# Records its arguments (keywords apart) and its ActiveJob bookkeeping.
class AjReport < ActiveJob::Base
  queue_as :activejob

  def perform(*args, **kwargs)
    record = {
      "job_class" => self.class.name, "job_id" => job_id, "provider_job_id" => provider_job_id,
      "queue_name" => queue_name,
      "priority" => priority, "executions" => executions, "locale" => locale,
      "args" => args.map { |a| describe(a) },
      "kwargs" => kwargs.to_h { |k, v| [k.to_s, describe(v)] }
    }
    Sidekiq.redis { |r| r.rpush(DONE, JSON.generate(record)) }
  end
end

# Jobs kiq claims (Python classes registered with activejob="..."), enqueued from Ruby.
class AjImport < ActiveJob::Base
  queue_as :activejob
end

class AjNobody < ActiveJob::Base
  queue_as :activejob
end

# Keyword arguments travel as a hash flagged _aj_ruby2_keywords.
class AjKeywords < ActiveJob::Base
  queue_as :activejob
end

def enqueue_all
  # Nothing may print Sidekiq's lines to our stdout, which carries the result.
  Sidekiq.logger = Logger.new($stderr, level: Logger::WARN)
  berlin = Time.zone.local(2026, 12, 3, 14, 30, 15.25)
  every_kind = [
    nil, true, false, 7, 2**70, 1.5, "text ü",
    :sym,
    {"string" => 1, :symbol => 2},
    {"only" => "strings"},
    ActiveSupport::HashWithIndifferentAccess.new("a" => 1),
    [1, [:nested, {"k" => :v}]],
    Time.utc(2026, 12, 3, 13, 54, 39.5),
    berlin,
    DateTime.new(2026, 12, 3, 13, 54, 39, "+02:00"),
    Date.new(2026, 12, 3),
    5.minutes,
    1.day + 2.hours,
    BigDecimal("12.345"),
    Integer,
    Customer.new(42)
  ]
  # Rails 7.1+ only: Range has a serializer (6.1 raises SerializationError for it).
  every_kind += [(1..10), (1...10), ("a".."z")] if RANGES
  jobs = []
  job = AjImport.perform_later(*every_kind)
  jobs << [job.class.name, job.job_id]
  job = AjKeywords.perform_later(1, mode: "full", at: Date.new(2026, 1, 2), tags: [:a])
  jobs << [job.class.name, job.job_id]
  job = AjImport.set(wait: 0.5, priority: 3, queue: :activejob).perform_later("later")
  jobs << [job.class.name, job.job_id]
  job = AjNobody.perform_later(1)
  jobs << [job.class.name, job.job_id]
  puts JSON.generate({"jobs" => jobs})
end

enqueue_all if $PROGRAM_NAME == __FILE__ && ARGV.first == "enqueue"
