# frozen_string_literal: true

# Look at (and act on) Redis through Sidekiq 6.4's data API, as Sidekiq's own tools would.
#
#   REDIS_URL=redis://127.0.0.1:6379/14 ruby tests/interop/ruby/api.rb            # snapshot
#   REDIS_URL=... ruby tests/interop/ruby/api.rb ACTION [ARGS...]                 # act, then snapshot
#
# Actions:
#   retry_all                 RetrySet#retry_all (every retry entry back to its queue)
#   kill_all                  RetrySet#kill_all (every retry entry to the Dead set)
#   delete JID                SortedEntry#delete in retry/schedule/dead, else JobRecord#delete
#                             in the first queue holding it
#   kill JID                  SortedEntry#kill of a retry or scheduled entry
#   reschedule JID SECONDS    SortedEntry#reschedule(now + SECONDS) of a retry or scheduled entry
#   quiet IDENTITY            Process#quiet! (LPUSH <identity>-signals TSTP)
#   stop IDENTITY             Process#stop!  (LPUSH <identity>-signals TERM)
#
# stdout: one JSON object {"stats", "queues", "retry", "scheduled", "dead", "processes",
# "workers"} plus, after an action, "action" => {"name", "args", "ok"}. Exit status 1 when
# the action found nothing to act on (the snapshot is still printed), 2 on usage errors.
# Times are shown as Sidekiq 6.4 reads them: payload times as float seconds, rendered ISO-8601.

require "json"
require "time"
require "sidekiq"
require "sidekiq/api"

# Debian pairs Sidekiq 6.4.1 with redis-rb 4.8, which prints a deprecation warning to stderr
# on every SADD and BRPOP; Sidekiq never reads SADD's return value (see worker_app.rb).
Redis.sadd_returns_boolean = false
Redis.silence_deprecations = true

abort "api.rb: REDIS_URL must be set (e.g. redis://127.0.0.1:6379/14)" unless ENV["REDIS_URL"]

Sidekiq.configure_client do |config|
  # SIDEKIQ_NAMESPACE=myapp: redis-namespace, every key "myapp:<key>" (see worker_app.rb)
  config.redis = {url: ENV.fetch("REDIS_URL"), size: 2, namespace: ENV["SIDEKIQ_NAMESPACE"]}.compact
end
Sidekiq.logger = Logger.new($stderr, level: Logger::WARN)

def iso(seconds)
  return nil if seconds.nil?
  Time.at(seconds.to_f).utc.iso8601(6)
end

def backtrace_of(entry)
  entry.error_backtrace
rescue => e
  # Keep going: an undecodable backtrace is exactly what an interop test wants to see.
  "!!! #{e.class}: #{e.message}"
end

def sorted_entry(entry)
  {
    "klass" => entry.klass,
    "display_class" => entry.display_class,
    "queue" => entry.queue || entry["queue"],
    "args" => entry.args,
    "jid" => entry.jid,
    "score" => entry.score,
    "at" => iso(entry.score),
    "error_class" => entry["error_class"],
    "error_message" => entry["error_message"],
    "retry_count" => entry["retry_count"],
    "failed_at" => iso(entry["failed_at"]),
    "retried_at" => iso(entry["retried_at"]),
    "created_at" => iso(entry["created_at"]),
    "error_backtrace" => backtrace_of(entry),
    "item" => entry.item
  }
end

def process_entry(process)
  {
    "identity" => process.identity,
    "hostname" => process["hostname"],
    "pid" => process["pid"],
    "tag" => process.tag,
    "labels" => process.labels,
    "started_at" => iso(process["started_at"]),
    "concurrency" => process["concurrency"],
    "queues" => process.queues,
    "busy" => process["busy"],
    "beat" => process["beat"],
    "quiet" => process["quiet"],
    "stopping" => process.stopping?,
    "rss" => process["rss"],
    "rtt_us" => process["rtt_us"]
  }
end

def snapshot
  stats = Sidekiq::Stats.new
  workers = []
  Sidekiq::Workers.new.each do |process_id, thread_id, work|
    payload = work["payload"] || {}
    workers << {
      "process_id" => process_id,
      "thread_id" => thread_id,
      "queue" => work["queue"],
      "class" => payload["class"],
      "args" => payload["args"],
      "jid" => payload["jid"],
      "run_at" => work["run_at"],
      "run_at_iso" => iso(work["run_at"])
    }
  end
  {
    "stats" => {
      "processed" => stats.processed,
      "failed" => stats.failed,
      "scheduled_size" => stats.scheduled_size,
      "retry_size" => stats.retry_size,
      "dead_size" => stats.dead_size,
      "processes_size" => stats.processes_size,
      "default_queue_latency" => stats.default_queue_latency,
      "enqueued" => stats.enqueued,
      "workers_size" => stats.workers_size,
      "queues" => stats.queues
    },
    "queues" => Sidekiq::Queue.all.map { |q| {"name" => q.name, "size" => q.size, "latency" => q.latency} },
    "retry" => Sidekiq::RetrySet.new.map { |e| sorted_entry(e) },
    "scheduled" => Sidekiq::ScheduledSet.new.map { |e| sorted_entry(e) },
    "dead" => Sidekiq::DeadSet.new.map { |e| sorted_entry(e) },
    "processes" => Sidekiq::ProcessSet.new.map { |p| process_entry(p) },
    "workers" => workers
  }
end

def find_sorted(jid, sets)
  sets.each do |set|
    entry = set.find_job(jid)
    return entry if entry
  end
  nil
end

def find_process(identity)
  Sidekiq::ProcessSet.new.find { |p| p.identity == identity }
end

def usage!(message)
  warn "api.rb: #{message}"
  exit 2
end

# Returns true when the action found its target.
def act(name, args)
  retry_and_schedule = [Sidekiq::RetrySet.new, Sidekiq::ScheduledSet.new]
  case name
  when "retry_all"
    Sidekiq::RetrySet.new.retry_all
    true
  when "kill_all"
    Sidekiq::RetrySet.new.kill_all
    true
  when "delete"
    jid = args.fetch(0) { usage!("delete JID") }
    entry = find_sorted(jid, retry_and_schedule + [Sidekiq::DeadSet.new])
    entry ||= Sidekiq::Queue.all.lazy.map { |q| q.find_job(jid) }.find(&:itself)
    entry ? (entry.delete; true) : false
  when "kill"
    entry = find_sorted(args.fetch(0) { usage!("kill JID") }, retry_and_schedule)
    entry ? (entry.kill; true) : false
  when "reschedule"
    usage!("reschedule JID SECONDS") unless args.size == 2
    entry = find_sorted(args[0], retry_and_schedule)
    entry ? (entry.reschedule(Time.now.to_f + Float(args[1])); true) : false
  when "quiet", "stop"
    process = find_process(args.fetch(0) { usage!("#{name} IDENTITY") })
    return false unless process
    (name == "quiet") ? process.quiet! : process.stop!
    true
  else
    usage!("unknown action #{name.inspect}")
  end
end

if ARGV.empty?
  puts JSON.generate(snapshot)
else
  name, *args = ARGV
  ok = act(name, args)
  puts JSON.generate(snapshot.merge("action" => {"name" => name, "args" => args, "ok" => ok}))
  exit(ok ? 0 : 1)
end
