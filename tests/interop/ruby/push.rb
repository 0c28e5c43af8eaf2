# frozen_string_literal: true

# Push jobs with Ruby Sidekiq's own client (Debian ruby-sidekiq 6.4.1), for interop tests.
#
#   echo '[{"op":"push","class":"PyEcho","queue":"default","args":[1,"x"]}]' |
#     REDIS_URL=redis://127.0.0.1:6379/14 ruby tests/interop/ruby/push.rb
#
# stdin: a JSON array of job specs
#   {"op": "push" | "perform_async" | "perform_in" | "push_bulk",
#    "class": "Name" (may be namespaced, "A::B"), "queue": "q" (default "default"),
#    "args": [...] (push_bulk: an array of arrays),
#    "at": epoch float (push/push_bulk: schedule at this time),
#    "in": seconds (push/push_bulk: schedule at now + in; perform_in: the interval),
#    "options": {...} (optional extra payload keys, e.g. {"retry": 0, "backtrace": true})}
#
# stdout: a JSON array with one element per spec, in order: the jid (a string), or for
# push_bulk the array of jids. Errors go to stderr with exit status 1.
#
# "push"/"push_bulk" use Sidekiq::Client with the class as a *string*, so the name need not
# exist in Ruby. "perform_async"/"perform_in" go through Sidekiq::Worker's class methods, so a
# stub class of that name is defined (Object.const_set) with `sidekiq_options queue:`.

require "json"
require "sidekiq"

# Debian pairs Sidekiq 6.4.1 with redis-rb 4.8, which prints a deprecation warning to stderr
# on every SADD (each push, each heartbeat) and every BRPOP (each fetch, i.e. every job and
# every 2 s idle). Sidekiq never reads SADD's return value, so take redis-rb 5's Integer
# behaviour (no warning, no caller() walk) and silence the rest.
Redis.sadd_returns_boolean = false
Redis.silence_deprecations = true

abort "push.rb: REDIS_URL must be set (e.g. redis://127.0.0.1:6379/14)" unless ENV["REDIS_URL"]

Sidekiq.configure_client do |config|
  # SIDEKIQ_NAMESPACE=myapp: redis-namespace, every key "myapp:<key>" (see worker_app.rb)
  config.redis = {url: ENV.fetch("REDIS_URL"), size: 2, namespace: ENV["SIDEKIQ_NAMESPACE"]}.compact
end
# Nothing here should print Sidekiq's INFO lines to our stdout, which carries the result.
Sidekiq.logger = Logger.new($stderr, level: Logger::WARN)

# Define (once) a stub job class named `name`, creating intermediate modules for "A::B".
def stub_class(name, queue)
  *modules, leaf = name.split("::")
  parent = modules.reduce(Object) do |mod, part|
    mod.const_defined?(part, false) ? mod.const_get(part, false) : mod.const_set(part, Module.new)
  end
  return parent.const_get(leaf, false) if parent.const_defined?(leaf, false)

  klass = Class.new do
    include Sidekiq::Worker

    def perform(*)
      raise "stub defined by push.rb; it only exists to enqueue"
    end
  end
  parent.const_set(leaf, klass)
  klass.sidekiq_options queue: queue
  klass
end

def schedule_time(spec)
  return spec["at"].to_f if spec["at"]
  return Time.now.to_f + spec["in"].to_f if spec["in"]
  nil
end

def perform(spec)
  queue = spec.fetch("queue", "default")
  item = (spec["options"] || {}).merge("class" => spec.fetch("class"), "queue" => queue)
  at = schedule_time(spec)
  case spec.fetch("op")
  when "push"
    item["args"] = spec.fetch("args", [])
    item["at"] = at if at
    Sidekiq::Client.push(item)
  when "push_bulk"
    item["args"] = spec.fetch("args")
    item["at"] = at if at
    Sidekiq::Client.push_bulk(item)
  when "perform_async", "perform_in"
    klass = stub_class(spec.fetch("class"), queue)
    setter = klass.set((spec["options"] || {}).merge("queue" => queue))
    args = spec.fetch("args", [])
    if spec["op"] == "perform_in"
      setter.perform_in(spec.fetch("in") { spec.fetch("at") }, *args)
    else
      setter.perform_async(*args)
    end
  else
    raise ArgumentError, "unknown op #{spec["op"].inspect}"
  end
end

begin
  specs = JSON.parse($stdin.read)
  raise ArgumentError, "stdin must be a JSON array of job specs" unless specs.is_a?(Array)
  puts JSON.generate(specs.map { |spec| perform(spec) })
rescue => e
  warn "push.rb: #{e.class}: #{e.message}"
  exit 1
end
