const ws = new WebSocket('ws://localhost:3001/api/ws');

ws.onopen = function() {
  // Subscribe to specific events
  ws.send(JSON.stringify({
    type: 'subscribe',
    events: ['job_status', 'runner_status', 'system_alerts']
  }));
};

ws.onmessage = function(event) {
  const data = JSON.parse(event.data);
  console.log('Received:', data);
  /*
  {
    "type": "job_status",
    "data": {
      "job_id": "job_123",
      "status": "completed",
      "timestamp": "2024-06-23T10:45:00Z"
    }
  }
  */
};
