"""`tokenpulse bench`: the real pipeline on a local stack, measured end to end.

Reading guide:
  run.run_bench(BenchConfig) -> BenchResult   the whole benchmark, one table
  services                                    the stack (env or a temporary LocalStack),
                                              one Pipeline = topics + database + worker
  load                                        fleet backlogs through the SDK, paced load
  raw                                         kafka-producer/consumer-perf-test
  peer                                        the quixstreams peer, run as a process
"""
