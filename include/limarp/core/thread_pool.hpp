#pragma once
/// \file thread_pool.hpp
/// \brief A fixed pool of worker threads with a blocking `parallel_for`.
///
/// Waiting: a worker between jobs, and the caller waiting for the workers, first poll for up to
/// the pool's spin time (an atomic load and a pause instruction per round), then sleep on a
/// condition variable. Decode calls `parallel_for` about ten times a layer, a few hundred times a
/// token, each for well under a millisecond of work: a worker that went to sleep in between is
/// woken through the kernel (on a virtual machine, through the hypervisor), about 60 us later on
/// the 2-vCPU dev VM (benchmarks/NOTES.md, session 14). The spin time is the constructor's
/// argument, by default `default_spin()`: the environment variable LIMARP_SPIN_US
/// (microseconds), else 200; 0 sleeps at once (for more busy threads than cores, where polling
/// takes turns from the thread being waited for).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace limarp {

/// A fixed set of threads. `parallel_for` splits a range into one contiguous chunk per
/// thread (the calling thread takes the first) and returns when every chunk is done.
/// Exceptions thrown by the body are rethrown in the caller. Nested calls run serially.
class ThreadPool {
public:
    /// Starts `n_threads - 1` workers (the caller is the n-th). `n_threads` 0 means hardware
    /// concurrency. Waiting threads poll for `spin` before they sleep (see the file comment).
    explicit ThreadPool(unsigned n_threads = 0, std::chrono::microseconds spin = default_spin())
        : spin_(std::max(spin, std::chrono::microseconds(0))) {
        if (n_threads == 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
        n_ = n_threads;
        for (unsigned i = 1; i < n_; ++i) workers_.emplace_back([this, i] { worker(i); });
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;
    ~ThreadPool() {
        {
            std::lock_guard lk(m_);
            stop_ = true;
            generation_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        for (auto& t : workers_) t.join();
    }

    /// Number of threads, the caller included.
    unsigned size() const noexcept { return n_; }

    /// Calls `fn(begin_i, end_i, thread_index)` on disjoint chunks covering [begin, end).
    /// Chunks are multiples of `grain` (except the last). Blocks until all are done.
    void parallel_for(std::int64_t begin, std::int64_t end,
                      const std::function<void(std::int64_t, std::int64_t, unsigned)>& fn,
                      std::int64_t grain = 1) {
        const std::int64_t n = end - begin;
        if (n <= 0) return;
        grain = std::max<std::int64_t>(grain, 1);
        const std::int64_t units = (n + grain - 1) / grain;
        const unsigned parts = static_cast<unsigned>(std::min<std::int64_t>(units, n_));
        if (parts <= 1 || in_worker_) {
            fn(begin, end, 0);
            return;
        }
        std::unique_lock call_lk(call_m_);  // one parallel_for at a time from outside threads
        {
            std::lock_guard lk(m_);
            job_ = &fn;
            begin_ = begin;
            end_ = end;
            grain_ = grain;
            parts_ = parts;
            pending_.store(parts - 1, std::memory_order_relaxed);
            error_ = nullptr;
            generation_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        run_part(0);
        spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; });
        std::unique_lock lk(m_);
        done_cv_.wait(lk, [this] { return pending_.load(std::memory_order_relaxed) == 0; });
        job_ = nullptr;
        if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    }

    /// The default spin time: LIMARP_SPIN_US (microseconds; read once) or 200 us.
    static std::chrono::microseconds default_spin() {
        static const std::chrono::microseconds us = [] {
            const char* e = std::getenv("LIMARP_SPIN_US");
            return std::chrono::microseconds(e ? std::max(0L, std::strtol(e, nullptr, 10)) : 200L);
        }();
        return us;
    }
    /// How long this pool's waiting threads poll before they sleep.
    std::chrono::microseconds spin() const noexcept { return spin_; }

    /// The process-wide pool, sized by the LIMARP_THREADS environment variable or the hardware.
    static ThreadPool& global() {
        static ThreadPool pool([] {
            const char* e = std::getenv("LIMARP_THREADS");
            return e ? static_cast<unsigned>(std::max(0, std::atoi(e))) : 0u;
        }());
        return pool;
    }

private:
    void run_part(unsigned p) {
        const std::int64_t units = (end_ - begin_ + grain_ - 1) / grain_;
        const std::int64_t u0 = units * p / parts_, u1 = units * (p + 1) / parts_;
        const std::int64_t b = begin_ + u0 * grain_, e = std::min(end_, begin_ + u1 * grain_);
        if (b >= e) return;
        in_worker_ = true;
        try {
            (*job_)(b, e, p);
        } catch (...) {
            std::lock_guard lk(m_);
            if (!error_) error_ = std::current_exception();
        }
        in_worker_ = false;
    }
    // Polls `ready()` for up to spin_ (the clock read every 256 rounds).
    template <class Ready>
    void spin_until(const Ready& ready) const {
        const auto limit = spin_;
        if (limit.count() <= 0) return;
        const auto t0 = std::chrono::steady_clock::now();
        for (unsigned i = 1;; ++i) {
            if (ready()) return;
#if defined(__x86_64__) || defined(__i386__)
            _mm_pause();
#else
            std::this_thread::yield();
#endif
            if (i % 256 == 0 && std::chrono::steady_clock::now() - t0 > limit) return;
        }
    }
    void worker(unsigned idx) {
        std::uint64_t seen = 0;
        for (;;) {
            spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
            {
                std::unique_lock lk(m_);
                cv_.wait(lk, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
                seen = generation_.load(std::memory_order_relaxed);
                if (stop_) return;
                if (!job_ || idx >= parts_) continue;
            }
            run_part(idx);
            {
                std::lock_guard lk(m_);
                if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) done_cv_.notify_one();
            }
        }
    }

    unsigned n_ = 1;
    std::chrono::microseconds spin_;
    std::vector<std::thread> workers_;
    std::mutex m_, call_m_;
    std::condition_variable cv_, done_cv_;
    const std::function<void(std::int64_t, std::int64_t, unsigned)>* job_ = nullptr;
    std::int64_t begin_ = 0, end_ = 0, grain_ = 1;
    unsigned parts_ = 0;
    std::atomic<unsigned> pending_{0};        // written under m_, polled without it
    std::atomic<std::uint64_t> generation_{0};  // likewise
    bool stop_ = false;
    std::exception_ptr error_;
    static inline thread_local bool in_worker_ = false;
};

}  // namespace limarp
