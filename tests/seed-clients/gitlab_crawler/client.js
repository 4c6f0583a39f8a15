const ws = new WebSocket('ws://localhost:5173/api/internal2/connect?token=your-api-token');

ws.onopen = function() {
    console.log('Connected to GitLab Crawler API');
};

ws.onmessage = function(event) {
    const message = JSON.parse(event.data);
    console.log('Received:', message);
};

ws.onerror = function(error) {
    console.error('WebSocket error:', error);
};
