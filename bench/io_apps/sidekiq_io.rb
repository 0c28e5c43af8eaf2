# frozen_string_literal: true

# Sidekiq 6.4's side of the I/O bench (bench/io_bench.py): RubyIo(kind, target, sent).
#
#   REDIS_URL=... ruby --yjit /usr/bin/sidekiq -r ./bench/io_apps/sidekiq_io.rb -c 50 -q default
#
#   kind "sleep"  sleep target (0.05 s)
#   kind "http"   GET target with Net::HTTP on one keep-alive connection per thread (the
#                 practical best: no TCP handshake per job)
#   sent > 0      first RPUSH bench:io:latency (Time.now.to_f - sent): enqueue -> start
#
# Client side (same file, `ruby -r ./sidekiq_io.rb -e 'SidekiqIo.fill(...)'`): push_bulk
# 1,000 at a time, and a paced producer on a 10 ms grid, as bench/io_apps/_io_common.py.

require "net/http"
require "uri"
require_relative "../../tests/interop/ruby/worker_app"

class RubyIo
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform(kind, target, sent)
    if sent.to_f > 0
      latency = Time.now.to_f - sent.to_f
      Sidekiq.redis { |r| r.rpush("bench:io:latency", latency.to_s) }
    end
    if kind == "sleep"
      sleep(target.to_f)
    else
      http = (Thread.current[:bench_io_http] ||= begin
        uri = URI(target)
        Net::HTTP.start(uri.host, uri.port)
      end)
      response = http.get("/")
      raise "GET #{target}: #{response.code}" unless response.code == "200"
    end
  end
end

module SidekiqIo
  TICK = 0.010

  def self.target(kind)
    kind == "sleep" ? 0.05 : ENV.fetch("BENCH_IO_URL")
  end

  def self.push(kind, count, sent)
    arg = target(kind)
    Sidekiq::Client.push_bulk("class" => RubyIo, "args" => Array.new(count) { [kind, arg, sent] })
  end

  def self.fill(kind, n)
    Sidekiq.redis { |c| c.ping }
    (0...n).each_slice(1000) { |slice| push(kind, slice.size, 0) }
    {"jobs" => n}
  end

  def self.paced(kind, rate, count)
    Sidekiq.redis { |c| c.ping }
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    sent = tick = 0
    while sent < count
      due = [count, ((tick + 1) * TICK * rate).round].min
      if due > sent
        push(kind, due - sent, Time.now.to_f)
        sent = due
      end
      tick += 1
      delay = started + tick * TICK - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      sleep(delay) if delay > 0
    end
    {"sent" => count}
  end
end
