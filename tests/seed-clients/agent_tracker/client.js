class TaskTrackerClient {
    constructor(baseUrl, apiKey) {
        this.baseUrl = baseUrl;
        this.apiKey = apiKey;
        this.ws = null;
    }

    connect(projectName) {
        const wsUrl = `${this.baseUrl.replace('http', 'ws')}/ws?api_key=${this.apiKey}&project=${projectName}`;
        this.ws = new WebSocket(wsUrl);

        this.ws.onmessage = (event) => {
            const data = JSON.parse(event.data);
            console.log('Received:', data);
        };

        this.ws.onerror = (error) => {
            console.error('WebSocket error:', error);
        };

        this.ws.onclose = () => {
            console.log('WebSocket connection closed');
        };
    }

    async getProjects() {
        const response = await fetch(`${this.baseUrl}/api/projects`, {
            headers: { 'X-API-Key': this.apiKey }
        });
        return response.json();
    }
}

// Использование
const client = new TaskTrackerClient('http://localhost:8000', 'your-api-key');
client.connect('my-project');
