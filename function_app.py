"""Azure Functions entry point: a timer that runs one poll cycle.

All logic lives in the `shared` package; this file only binds the schedule
(the TIMER_SCHEDULE app setting) and SIGTERM to `shared.wiring`.
"""

import logging

import azure.functions as func

from shared.wiring import run_timer_cycle, stop_gracefully_on_signals

app = func.FunctionApp()
stop_gracefully_on_signals()


@app.timer_trigger(schedule="%TIMER_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def poll_pulumi_audit_logs(timer: func.TimerRequest) -> None:
    if timer.past_due:
        logging.info("timer is past due; this run catches up from the checkpoint")
    run_timer_cycle()
